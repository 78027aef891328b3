from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError, HL7Error, ListenError
from engine.hl7v2 import read_header
from engine.response import hl7_ack, hl7_nak_unparsed
from engine.sources.base import Inbound
from engine.sources.mllp import MLLPConfig, MLLPSource, MLLPTLSConfig, frame
from engine.sources.mllp_client import send, send_messages

LOOPBACK = "127.0.0.1"
TEST_TIMEOUT_S = 10.0


def message(control_id: str = "MSG1", size: int = 0) -> bytes:
    text = (
        f"MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        "PID|1||123456^^^HOSP^MR||DOE^JOHN||19700101|M"
    )
    if size:
        text += "\rNTE|1||" + "x" * max(0, size - len(text) - 8)
    return text.encode()


class Recorder:
    """A handler that records what it is given and answers like the engine: ACK, or NAK with the error."""

    def __init__(self, behaviour: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.calls: list[tuple[bytes, Inbound]] = []
        self.behaviour = behaviour

    async def __call__(self, raw: bytes, inbound: Inbound) -> bytes:
        self.calls.append((raw, inbound))
        if self.behaviour is not None:
            await self.behaviour(len(self.calls))
        text = raw.decode("latin-1")
        try:
            header = read_header(text)
        except HL7Error as exc:
            return hl7_nak_unparsed(text, inbound.error or exc).encode()
        if inbound.error is not None:
            return hl7_ack(header, "AR", error=inbound.error).encode()
        return hl7_ack(header, "AA").encode()


def serve(
    test: Callable[[MLLPSource], Awaitable[None]],
    handler: Callable[[bytes, Inbound], Awaitable[bytes]] | None = None,
    **options: object,
) -> MLLPSource:
    """Run ``await test(source)`` against a started source on a free port; always stopped, bounded."""

    async def main() -> MLLPSource:
        source = MLLPSource(
            MLLPConfig.model_validate({"type": "mllp", "port": 0, **options}), handler or Recorder(), name="t"
        )
        await source.start()
        try:
            await test(source)
        finally:
            await source.stop()
        return source

    async def bounded() -> MLLPSource:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            return await main()

    return asyncio.run(bounded())


def recorder(source: MLLPSource) -> Recorder:
    handler = source._handler
    assert isinstance(handler, Recorder)
    return handler


async def connect(source: MLLPSource) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, source.port)


async def read_reply(reader: asyncio.StreamReader, timeout_s: float = 2.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        data = await reader.readuntil(b"\x1c\r")
    assert data.startswith(b"\x0b")
    return data[1:-2]


async def read_eof(reader: asyncio.StreamReader, timeout_s: float = 2.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(timeout_s):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def msa(reply: bytes) -> list[str]:
    for segment in reply.decode().split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")
    raise AssertionError("no MSA segment in reply")


# -- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [MLLPConfig, MLLPTLSConfig])
def test_every_option_is_described(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, name


def test_config_defaults_and_strictness() -> None:
    cfg = MLLPConfig(type="mllp", port=2575)
    assert cfg.host == "127.0.0.1"
    assert cfg.max_frame_bytes == 8 * 1024 * 1024
    assert (cfg.read_timeout_s, cfg.idle_timeout_s, cfg.max_connections) == (30, 600, 100)
    assert cfg.tls is None
    with pytest.raises(ValidationError):
        MLLPConfig.model_validate({"type": "mllp", "port": 2575, "max_frame_size": 10})
    with pytest.raises(ValidationError):
        MLLPConfig.model_validate({"type": "mllp", "port": 70000})
    with pytest.raises(ValidationError, match="require_client_cert needs ca_file"):
        MLLPTLSConfig(cert_file=Path("c.pem"), key_file=Path("k.pem"), require_client_cert=True)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        source = MLLPSource(MLLPConfig(type="mllp", port=port), Recorder())
        with pytest.raises(ListenError) as caught:
            asyncio.run(source.start())
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_unreadable_tls_files_fail_at_start(tmp_path: Path) -> None:
    tls = MLLPTLSConfig(cert_file=tmp_path / "missing.pem", key_file=tmp_path / "missing.key")
    source = MLLPSource(MLLPConfig(type="mllp", port=0, tls=tls), Recorder())
    with pytest.raises(ConfigError, match="cert_file/key_file"):
        asyncio.run(source.start())


# -- the real sender: python-hl7's mllp_send -------------------------------------------------------------


def test_mllp_send_command_line(tmp_path: Path) -> None:
    tool = shutil.which("mllp_send", path=str(Path(sys.executable).parent)) or shutil.which("mllp_send")
    assert tool, "python-hl7's mllp_send console script is not installed"
    batch = tmp_path / "messages.hl7"
    batch.write_bytes(frame(message("CLI1")) + frame(message("CLI2")))

    async def test(source: MLLPSource) -> None:
        proc = await asyncio.create_subprocess_exec(
            tool,
            "--port",
            str(source.port),
            "--file",
            str(batch),
            LOOPBACK,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert out.count(b"\x0bMSH|^~\\&|EHR|CLINIC|LAB|HOSP|") == 2
        assert b"\rMSA|AA|CLI1\x1c\r" in out
        assert b"\rMSA|AA|CLI2\x1c\r" in out

    source = serve(test)
    calls = recorder(source).calls
    assert [raw for raw, _ in calls] == [message("CLI1"), message("CLI2")]
    assert all(inbound.error is None and inbound.peer.startswith(f"{LOOPBACK}:") for _, inbound in calls)


# -- framing ------------------------------------------------------------------------------------------


def test_several_messages_on_one_connection() -> None:
    async def test(source: MLLPSource) -> None:
        replies = await send_messages(LOOPBACK, source.port, [message(f"M{i}") for i in range(5)], timeout_s=2)
        assert [msa(r)[1:3] for r in replies] == [["AA", f"M{i}"] for i in range(5)]

    source = serve(test)
    assert [raw for raw, _ in recorder(source).calls] == [message(f"M{i}") for i in range(5)]
    assert source.stats.connections == 1
    assert (source.stats.messages, source.stats.replies) == (5, 5)


def test_blocking_client() -> None:
    async def test(source: MLLPSource) -> None:
        replies = await asyncio.to_thread(send, LOOPBACK, source.port, [message("S1"), message("S2")], 2.0)
        assert [msa(r)[1:3] for r in replies] == [["AA", "S1"], ["AA", "S2"]]

    serve(test)


def test_frame_split_into_single_bytes() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        for i, byte in enumerate(frame(message("SPLIT"))):
            writer.write(bytes([byte]))
            await writer.drain()
            if i % 8 == 0:
                await asyncio.sleep(0.001)
        assert msa(await read_reply(reader))[1:3] == ["AA", "SPLIT"]
        await close(writer)

    source = serve(test)
    assert [raw for raw, _ in recorder(source).calls] == [message("SPLIT")]
    assert source.stats.skipped_bytes == 0


def test_two_frames_in_one_write() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("A")) + frame(message("B")))
        assert msa(await read_reply(reader))[1:3] == ["AA", "A"]
        assert msa(await read_reply(reader))[1:3] == ["AA", "B"]
        await close(writer)

    source = serve(test)
    assert [raw for raw, _ in recorder(source).calls] == [message("A"), message("B")]
    assert source.stats.skipped_bytes == 0


def test_end_block_without_carriage_return() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(b"\x0b" + message("E1") + b"\x1c")
        assert msa(await read_reply(reader))[1:3] == ["AA", "E1"]
        writer.write(b"\x0b" + message("E2") + b"\x1c\r")
        assert msa(await read_reply(reader))[1:3] == ["AA", "E2"]
        await close(writer)

    source = serve(test)
    assert len(recorder(source).calls) == 2


def test_bytes_outside_frames_are_skipped_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    garbage = b"PID|DOE^JOHN\r\n"

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(garbage + frame(message("G1")) + b"\n")
        assert msa(await read_reply(reader))[1:3] == ["AA", "G1"]
        writer.write(frame(message("G2")))
        assert msa(await read_reply(reader))[1:3] == ["AA", "G2"]
        await close(writer)
        await until(lambda: source.connections == 0)

    source = serve(test)
    assert [raw for raw, _ in recorder(source).calls] == [message("G1"), message("G2")]
    assert source.stats.skipped_bytes == len(garbage) + 1
    assert f"{len(garbage) + 1} bytes outside MLLP frames skipped" in caplog.text
    assert "DOE" not in caplog.text


def test_empty_reply_sends_nothing() -> None:
    async def quiet_first(raw: bytes, inbound: Inbound) -> bytes:
        return b"" if b"|Q1|" in raw else hl7_ack(read_header(raw.decode()), "AA").encode()

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("Q1")) + frame(message("Q2")))
        assert msa(await read_reply(reader))[1:3] == ["AA", "Q2"]
        await close(writer)

    source = serve(test, quiet_first)
    assert (source.stats.messages, source.stats.replies) == (2, 1)


# -- limits -------------------------------------------------------------------------------------------


def test_oversize_frame_is_truncated_nakked_and_connection_survives(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    big = message("BIG", size=5000)

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        data = frame(big)
        for i in range(0, len(data), 700):  # crosses the limit in the middle of a read
            writer.write(data[i : i + 700])
            await writer.drain()
            await asyncio.sleep(0.001)
        reply = await read_reply(reader)
        assert msa(reply)[1:3] == ["AR", "BIG"]
        assert b"\rERR||" in reply and b"207^Application internal error^HL70357" in reply
        writer.write(frame(message("NEXT")))
        assert msa(await read_reply(reader))[1:3] == ["AA", "NEXT"]
        await close(writer)

    source = serve(test, max_frame_bytes=1000)
    (raw, inbound), (raw2, inbound2) = recorder(source).calls
    assert raw == big[:1000]
    assert inbound.error is not None
    assert inbound.error.code == "207"
    assert inbound.error.message == "the message is over the cap max_frame_bytes = 1000 bytes"
    assert raw2 == message("NEXT") and inbound2.error is None
    assert source.stats.oversize == 1
    assert "DOE" not in caplog.text


def test_oversize_frame_in_one_write_followed_by_another_frame() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("BIG", size=3000)) + frame(message("OK")))
        assert msa(await read_reply(reader))[1:3] == ["AR", "BIG"]
        assert msa(await read_reply(reader))[1:3] == ["AA", "OK"]
        await close(writer)

    source = serve(test, max_frame_bytes=500)
    assert [len(raw) for raw, _ in recorder(source).calls] == [500, len(message("OK"))]


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    exact = message("EXACT", size=600)

    async def test(source: MLLPSource) -> None:
        assert msa((await send_messages(LOOPBACK, source.port, [exact], timeout_s=2))[0])[1] == "AA"

    source = serve(test, max_frame_bytes=len(exact))
    assert recorder(source).calls[0][1].error is None


def test_unterminated_frame_is_stored_with_error_never_acked() -> None:
    partial = message("HALF")[:60]

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        started = time.monotonic()
        writer.write(b"\x0b" + partial)
        assert await read_eof(reader) == b""  # closed, and nothing was sent
        assert time.monotonic() - started >= 0.2
        await close(writer)

    source = serve(test, read_timeout_s=0.2)
    ((raw, inbound),) = recorder(source).calls
    assert raw == partial
    assert inbound.error is not None
    assert inbound.error.message == "message not terminated within 0.2 s"
    assert source.stats.unterminated == 1
    assert source.stats.replies == 0


def test_unterminated_oversize_frame_passes_the_kept_bytes() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(b"\x0b" + message("HUGE", size=2000))
        assert await read_eof(reader) == b""
        await close(writer)

    source = serve(test, read_timeout_s=0.2, max_frame_bytes=300)
    ((raw, inbound),) = recorder(source).calls
    assert raw == message("HUGE", size=2000)[:300]
    assert inbound.error is not None and "not terminated" in inbound.error.message


def test_idle_connection_is_closed() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        assert msa((await send_messages(LOOPBACK, source.port, [message("I1")], timeout_s=2))[0])[1] == "AA"
        assert await read_eof(reader) == b""
        await close(writer)

    source = serve(test, idle_timeout_s=0.2)
    assert len(recorder(source).calls) == 1


def test_sender_that_does_not_read_its_reply_is_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def huge_reply(raw: bytes, inbound: Inbound) -> bytes:
        return b"MSH|^~\\&|" + b"x" * (16 * 1024 * 1024)  # more than the socket buffers hold

    async def test(source: MLLPSource) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, source.port))
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(frame(message("R1")))
        await until(lambda: source.connections == 1)
        await until(lambda: source.connections == 0, timeout_s=5)
        await close(writer)

    source = serve(test, huge_reply, write_timeout_s=0.2)
    assert source.stats.replies == 0
    assert "did not read its reply within 0.2s" in caplog.text


def test_max_connections() -> None:
    async def test(source: MLLPSource) -> None:
        reader1, writer1 = await connect(source)
        writer1.write(frame(message("C1")))
        assert msa(await read_reply(reader1))[1] == "AA"
        reader2, writer2 = await connect(source)
        assert await read_eof(reader2) == b""  # refused at once
        await close(writer2)
        writer1.write(frame(message("C1b")))
        assert msa(await read_reply(reader1))[1] == "AA"  # the first connection is unaffected
        await close(writer1)
        await until(lambda: source.connections == 0)
        replies = await send_messages(LOOPBACK, source.port, [message("C3")], timeout_s=2)
        assert msa(replies[0])[1:3] == ["AA", "C3"]

    source = serve(test, max_connections=1)
    assert source.stats.refused == 1
    assert source.stats.connections == 2


# -- one host must not lock the others out (issue 5, defect 4) ----------------------------------------


async def connect_from(source: MLLPSource, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from another loopback address (all of 127.0.0.0/8 is this host on Linux)."""
    return await asyncio.open_connection(LOOPBACK, source.port, local_addr=(address, 0))


def test_one_host_holding_every_connection_does_not_lock_another_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def test(source: MLLPSource) -> None:
        held = []
        for i in range(5):  # the maximum, all idle: some after a message, some silent
            reader, writer = await connect_from(source, "127.0.0.2")
            if i % 2 == 0:
                writer.write(frame(message(f"H{i}")))
                assert msa(await read_reply(reader))[1] == "AA"
            held.append((reader, writer))
        await until(lambda: source.connections == 5)
        replies = await send_messages(LOOPBACK, source.port, [message("LEGIT")], timeout_s=2)
        assert msa(replies[0])[1:3] == ["AA", "LEGIT"]
        assert await read_eof(held[0][0]) == b""  # the longest idle one made room
        # The holder is over its share now (4 of 5 with two hosts): it gets nothing more while full.
        await until(lambda: source.connections == 4)
        legit_reader, legit = await connect(source)  # the listener is full again (4 + 1)
        extra_reader, extra_writer = await connect_from(source, "127.0.0.2")
        assert await read_eof(extra_reader) == b""
        legit.write(frame(message("LEGIT2")))
        assert msa(await read_reply(legit_reader))[1] == "AA"
        for w in (legit, extra_writer, *(w for _, w in held)):
            await close(w)

    source = serve(test, max_connections=5)
    assert source.stats.evicted == 1 and source.stats.refused == 1
    evicted = next(r.getMessage() for r in caplog.records if "max_connections (5) reached: closing" in r.getMessage())
    assert "127.0.0.2:" in evicted and "to admit 127.0.0.1" in evicted
    assert not any("LEGIT" in r.getMessage() or "DOE" in r.getMessage() for r in caplog.records)


def test_max_connections_per_peer() -> None:
    async def test(source: MLLPSource) -> None:
        first = [await connect_from(source, "127.0.0.2") for _ in range(2)]
        await until(lambda: source.connections == 2)
        reader, writer = await connect_from(source, "127.0.0.2")
        assert await read_eof(reader) == b""  # a third from the same host: closed at once
        await close(writer)
        other = await send_messages(LOOPBACK, source.port, [message("OTHER")], timeout_s=2)
        assert msa(other[0])[1] == "AA"  # another host is not affected
        for r, w in first:
            w.write(frame(message("MINE")))
            assert msa(await read_reply(r))[1] == "AA"  # nor are the host's own connections
            await close(w)

    source = serve(test, max_connections_per_peer=2)
    assert source.stats.refused == 1 and source.stats.evicted == 0


def test_eviction_spares_connections_in_the_middle_of_a_message() -> None:
    release = asyncio.Event()

    async def wait(n: int) -> None:
        if n == 1:
            await release.wait()

    async def test(source: MLLPSource) -> None:
        busy_reader, busy = await connect_from(source, "127.0.0.2")
        busy.write(frame(message("BUSY")))  # being answered
        await until(lambda: len(recorder(source).calls) == 1)
        partial_reader, partial = await connect_from(source, "127.0.0.3")
        partial.write(frame(message("HALF"))[:20])  # a frame started, not ended
        await until(lambda: source.connections == 2)
        reader, writer = await connect(source)
        assert await read_eof(reader) == b""  # full, and nothing idle to evict
        release.set()
        assert msa(await read_reply(busy_reader))[1:3] == ["AA", "BUSY"]
        partial.write(frame(message("HALF"))[20:])
        assert msa(await read_reply(partial_reader))[1:3] == ["AA", "HALF"]
        for w in (writer, busy, partial):
            await close(w)

    source = serve(test, Recorder(wait), max_connections=2)
    assert source.stats.evicted == 0 and source.stats.refused == 1


def test_first_byte_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def test(source: MLLPSource) -> None:
        silent_reader, silent = await connect(source)
        talker_reader, talker = await connect(source)
        talker.write(frame(message("T1")))
        assert msa(await read_reply(talker_reader))[1] == "AA"
        started = time.monotonic()
        assert await read_eof(silent_reader) == b""  # nothing sent: closed after first_byte_timeout_s
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.3)  # past first_byte_timeout_s: a connection that spoke gets idle_timeout_s
        talker.write(frame(message("T2")))
        assert msa(await read_reply(talker_reader))[1] == "AA"
        await close(silent)
        await close(talker)

    serve(test, first_byte_timeout_s=0.2, idle_timeout_s=5)
    assert any("nothing received within 0.2s" in r.getMessage() for r in caplog.records)


def test_charset_mllp_cannot_carry_is_flagged_for_the_handler() -> None:
    def declaring(control_id: str, charset: str) -> bytes:
        return message(control_id).replace(b"|P|2.5.1\r", b"|P|2.5.1||||||" + charset.encode() + b"\r", 1)

    async def test(source: MLLPSource) -> None:
        replies = await send_messages(
            LOOPBACK,
            source.port,
            [declaring("U16", "UNICODE UTF-16"), declaring("U32", "unicode utf-32"), declaring("U8", "UNICODE UTF-8")],
            timeout_s=2,
        )
        assert [msa(r)[1] for r in replies] == ["AR", "AR", "AA"]

    source = serve(test)
    errors = [inbound.error for _, inbound in recorder(source).calls]
    assert errors[2] is None
    for error in errors[:2]:
        assert error is not None and error.reject and (error.code, error.location) == ("204", "MSH^1^18")
    assert source.stats.wide_charset == 2


def test_allow_from_refuses_other_addresses() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("X")))
        assert await read_eof(reader) == b""
        await close(writer)

    source = serve(test, allow_from=["10.0.0.0/8", "192.168.1.7"])
    assert source.stats.refused == 1
    assert recorder(source).calls == []

    async def allowed(source: MLLPSource) -> None:
        assert len(await send_messages(LOOPBACK, source.port, [message("Y")], timeout_s=2)) == 1

    serve(allowed, allow_from=["127.0.0.0/8"])


# -- handler failures ---------------------------------------------------------------------------------


def test_handler_raising_gets_internal_error_and_connection_survives(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def fail_first(n: int) -> None:
        if n == 1:
            raise RuntimeError("cannot store patient DOE^JOHN")

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("H1")))
        reply = await read_reply(reader)
        assert msa(reply)[1:4] == ["AE", "H1", "internal error"]
        assert b"207^Application internal error^HL70357" in reply
        assert b"DOE" not in reply
        writer.write(frame(message("H2")))
        assert msa(await read_reply(reader))[1:3] == ["AA", "H2"]
        await close(writer)

    source = serve(test, Recorder(fail_first))
    assert source.stats.handler_errors == 1
    assert "RuntimeError" in caplog.text
    assert "DOE" not in caplog.text


def test_handler_raising_on_unreadable_message() -> None:
    async def broken(raw: bytes, inbound: Inbound) -> bytes:
        raise ValueError("no")

    async def test(source: MLLPSource) -> None:
        (reply,) = await send_messages(LOOPBACK, source.port, [b"not hl7 at all"], timeout_s=2)
        assert reply.startswith(b"MSH|^~\\&|")
        assert msa(reply)[1:4] == ["AE", "", "internal error"]

    serve(test, broken)


def test_handler_returning_text_is_an_internal_error() -> None:
    async def wrong_type(raw: bytes, inbound: Inbound) -> bytes:
        return "MSA|AA"  # type: ignore[return-value]

    async def test(source: MLLPSource) -> None:
        (reply,) = await send_messages(LOOPBACK, source.port, [message("T1")], timeout_s=2)
        assert msa(reply)[1:3] == ["AE", "T1"]

    assert serve(test, wrong_type).stats.handler_errors == 1


def test_slow_handler_times_out_with_internal_error() -> None:
    cancelled: list[int] = []

    async def hang_first(n: int) -> None:
        if n == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(n)
                raise

    async def test(source: MLLPSource) -> None:
        replies = await send_messages(LOOPBACK, source.port, [message("W1"), message("W2")], timeout_s=2)
        assert msa(replies[0])[1:4] == ["AE", "W1", "internal error: no reply in time"]
        assert msa(replies[1])[1:3] == ["AA", "W2"]

    source = serve(test, Recorder(hang_first), reply_timeout_s=0.2)
    assert cancelled == [1]
    assert source.stats.handler_errors == 1


def test_peer_disconnecting_mid_frame_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def test(source: MLLPSource) -> None:
        _, writer = await connect(source)
        writer.write(b"\x0b" + message("CUT")[:30])
        await writer.drain()
        await until(lambda: source.connections == 1)
        await close(writer)
        await until(lambda: source.connections == 0)
        reader2, writer2 = await connect(source)  # the listener is fine
        writer2.write(frame(message("AFTER")))
        assert msa(await read_reply(reader2))[1:3] == ["AA", "AFTER"]
        await close(writer2)

    source = serve(test)
    assert [raw for raw, _ in recorder(source).calls] == [message("AFTER")]
    assert caplog.records == []


# -- TLS ------------------------------------------------------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line tool is needed to make test certificates")
    directory = tmp_path_factory.mktemp("certs")
    return {name: make_cert(directory, name) for name in ("server", "client")}


def test_tls(certs: dict[str, tuple[Path, Path]]) -> None:
    cert, key = certs["server"]
    client = ssl.create_default_context(cafile=str(cert))

    async def test(source: MLLPSource) -> None:
        replies = await send_messages(LOOPBACK, source.port, [message("TLS1"), message("TLS2")], tls=client)
        assert [msa(r)[1:3] for r in replies] == [["AA", "TLS1"], ["AA", "TLS2"]]
        replies = await asyncio.to_thread(send, LOOPBACK, source.port, [message("TLS3")], 2.0, tls=client)
        assert msa(replies[0])[1:3] == ["AA", "TLS3"]
        reader, writer = await connect(source)  # plain TCP to a TLS listener gets no reply
        writer.write(frame(message("PLAIN")))
        assert await read_eof(reader) == b""
        await close(writer)

    source = serve(test, tls={"cert_file": str(cert), "key_file": str(key), "handshake_timeout_s": 1})
    assert [raw for raw, _ in recorder(source).calls] == [message("TLS1"), message("TLS2"), message("TLS3")]


def test_tls_client_certificate_required(certs: dict[str, tuple[Path, Path]]) -> None:
    cert, key = certs["server"]
    client_cert, client_key = certs["client"]
    anonymous = ssl.create_default_context(cafile=str(cert))
    identified = ssl.create_default_context(cafile=str(cert))
    identified.load_cert_chain(client_cert, client_key)

    async def test(source: MLLPSource) -> None:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await send_messages(LOOPBACK, source.port, [message("ANON")], tls=anonymous, timeout_s=2)
        (reply,) = await send_messages(LOOPBACK, source.port, [message("MTLS")], tls=identified, timeout_s=2)
        assert msa(reply)[1:3] == ["AA", "MTLS"]

    tls = {"cert_file": str(cert), "key_file": str(key), "ca_file": str(client_cert), "require_client_cert": True}
    source = serve(test, tls=tls)
    assert [raw for raw, _ in recorder(source).calls] == [message("MTLS")]


# -- stop ---------------------------------------------------------------------------------------------


def test_stop_closes_idle_connections_promptly() -> None:
    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("S1")))
        assert msa(await read_reply(reader))[1] == "AA"
        started = time.monotonic()
        await source.stop()
        assert time.monotonic() - started < 1.0
        assert await read_eof(reader) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection(LOOPBACK, source.port)
        await close(writer)

    source = serve(test)
    assert source.connections == 0


def test_stop_lets_a_reply_in_progress_finish() -> None:
    async def slow(n: int) -> None:
        await asyncio.sleep(0.3)

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("LAST")))
        await until(lambda: len(recorder(source).calls) == 1)
        await source.stop()
        assert msa(await read_reply(reader))[1:3] == ["AA", "LAST"]
        assert await read_eof(reader) == b""
        await close(writer)

    serve(test, Recorder(slow))


def test_stop_gives_up_after_grace() -> None:
    async def stuck(n: int) -> None:
        await asyncio.sleep(30)

    async def test(source: MLLPSource) -> None:
        reader, writer = await connect(source)
        writer.write(frame(message("STUCK")))
        await until(lambda: len(recorder(source).calls) == 1)
        started = time.monotonic()
        await source.stop()
        assert time.monotonic() - started < 1.5
        assert await read_eof(reader) == b""  # never acknowledged
        await close(writer)

    serve(test, Recorder(stuck), shutdown_grace_s=0.2)
