"""``interlink send`` over MLLP: each file's ACK printed as it arrives, a dropped connection reopened and the
unacknowledged message resent (the engine's MSH-10 dedupe keeps the copy as a duplicate), TLS and mutual TLS
from options or from the channel's TLS settings. A real MLLP source on a real SQLite store
(``tests.sources.test_hl7_batch.Rig``: the source built as the runtime builds it)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.sources.mllp import frame
from engine.sources.mllp_client import _take_frame, send
from engine.store import MessageStatus
from tests.integration.harness import free_port
from tests.sources.test_hl7_batch import LOOPBACK, Rig, msg, run
from tests.sources.test_mllp import certs  # noqa: F401  (the module's test certificates, made once)


def files(tmp: Path, *cids: str) -> list[Path]:
    out = []
    for cid in cids:
        (path := tmp / f"{cid}.hl7").write_bytes(msg(cid).replace(b"\r", b"\n"))
        out.append(path)
    return out


async def invoke(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, [*args, "--timeout-s", "10"])


def test_each_ack_is_reported_before_the_next_message_is_sent(tmp_path: Path) -> None:
    events: list[str] = []

    async def test(rig: Rig) -> None:
        inner = rig.source._handler

        async def handler(raw: bytes, inbound: Any) -> bytes:
            events.append("received " + raw.split(b"|")[9].decode())
            return await inner(raw, inbound)

        rig.source._handler = handler
        messages = [msg("E1"), msg("E2"), msg("E3")]
        await asyncio.to_thread(send, LOOPBACK, rig.source.port, messages, 10.0,
                                on_reply=lambda i, _: events.append(f"reply {i}"))  # fmt: skip

    run(tmp_path, test).close()
    assert events == ["received E1", "reply 0", "received E2", "reply 1", "received E3", "reply 2"]


def test_send_prints_each_file_and_fails_when_one_is_refused(tmp_path: Path) -> None:
    ok, other = files(tmp_path, "F1", "F2")
    refused = tmp_path / "orm.hl7"
    refused.write_bytes(msg("F3", "ORM^O01"))
    results: list[Result] = []

    async def test(rig: Rig) -> None:
        results.append(await invoke("send", str(ok), str(refused), str(other), "--port", str(rig.source.port)))

    run(tmp_path, test).close()
    (result,) = results
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{ok}: AA" and lines[2] == f"{other}: AA"
    assert lines[1].startswith(f"{refused}: AR ") and "no mapping for message type" in lines[1]


class DroppingProxy:
    """Forwards MLLP frames to the source; for the ``drop``-th frame it forwards the message and waits for its
    reply, then closes the sender's connection instead of passing the reply on: stored, never acknowledged."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port, self.drop, self.frames, self.connections = target_port, drop, 0, 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, LOOPBACK, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        buf, up_buf = bytearray(), bytearray()
        try:
            while data := await reader.read(65536):
                buf += data
                while (message := _take_frame(buf, 1 << 20)) is not None:
                    self.frames += 1
                    up_writer.write(frame(message))
                    while (reply := _take_frame(up_buf, 1 << 20)) is None:
                        up_buf += await up_reader.read(65536)
                    if self.frames == self.drop:
                        return
                    writer.write(frame(reply))
                    await writer.drain()
        finally:
            up_writer.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def test_a_dropped_connection_is_reopened_and_the_message_resent_as_a_known_duplicate(tmp_path: Path) -> None:
    paths = files(tmp_path, "R1", "R2", "R3")
    results: list[Result] = []
    proxies: list[DroppingProxy] = []

    async def test(rig: Rig) -> None:
        proxies.append(proxy := DroppingProxy(rig.source.port, drop=2))
        port = await proxy.start()
        results.append(await invoke("send", *map(str, paths), "--port", str(port)))
        proxy.server.close()

    rig = run(tmp_path, test)
    try:
        (result,) = results
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [f"{p}: AA" for p in paths]
        assert f"{paths[1]}: no ACK (connection closed before the reply to message 2); reconnecting" in result.stderr
        assert "recognises its MSH-10 and keeps it as a duplicate" in result.stderr
        assert proxies[0].connections == 2 and proxies[0].frames == 4
        assert sorted(r.control_id for r in rig.rows(MessageStatus.received)) == ["R1", "R2", "R3"]
        assert [r.control_id for r in rig.rows(MessageStatus.duplicate)] == ["R2"]  # stored once, resent copy known
    finally:
        rig.close()


def test_reconnects_are_bounded(tmp_path: Path) -> None:
    (path,) = files(tmp_path, "N1")
    port = free_port()  # nothing listens
    result = CliRunner().invoke(app, ["send", str(path), "--port", str(port), "--reconnects", "1", "--timeout-s", "2"])
    assert result.exit_code == 1
    assert result.stderr.count(f"cannot connect to 127.0.0.1:{port}") == 1  # once again, then it gives up
    assert "duplicate" not in result.stderr and f"cannot send to 127.0.0.1:{port}" in result.stderr


# -- TLS ------------------------------------------------------------------------------------------------


def test_tls_and_mutual_tls_from_options(tmp_path: Path, certs: dict[str, tuple[Path, Path]]) -> None:  # noqa: F811
    (server, server_key), (client, client_key) = certs["server"], certs["client"]
    (path,) = files(tmp_path, "T1")
    results: list[Result] = []

    async def test(rig: Rig) -> None:
        port = str(rig.source.port)
        results.append(await invoke("send", str(path), "--port", port, "--ca", str(server)))  # no client cert
        results.append(await invoke("send", str(path), "--port", port, "--ca", str(server),
                                    "--cert", str(client), "--key", str(client_key)))  # fmt: skip
        results.append(await invoke("send", str(path), "--port", port, "--tls"))  # the system's CAs: not trusted

    tls = {"cert_file": str(server), "key_file": str(server_key), "ca_file": str(client),
           "require_client_cert": True, "handshake_timeout_s": 2}  # fmt: skip
    rig = run(tmp_path, test, source={"tls": tls})
    try:
        refused, accepted, untrusted = results
        assert refused.exit_code == 1 and "cannot send to 127.0.0.1" in refused.stderr
        assert accepted.exit_code == 0 and accepted.stdout == f"{path}: AA\n", accepted.output
        assert untrusted.exit_code == 1 and "TLS: CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        assert [r.control_id for r in rig.rows()] == ["T1"]
    finally:
        rig.close()


def test_tls_from_the_channel_settings(tmp_path: Path, certs: dict[str, tuple[Path, Path]]) -> None:  # noqa: F811
    (server, server_key), (client, client_key) = certs["server"], certs["client"]
    (path,) = files(tmp_path, "C1")
    port = free_port()
    tls = {"cert_file": str(server), "key_file": str(server_key), "ca_file": str(client), "require_client_cert": True}
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "adt.yaml").write_text(yaml.safe_dump({
        "name": "adt", "source": {"type": "mllp", "port": port, "tls": tls},
        "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}]}))  # fmt: skip
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"channels_dir": str(tmp_path / "channels"), "data_dir": str(tmp_path)}))
    results: list[Result] = []

    async def test(rig: Rig) -> None:
        args = ("send", str(path), "--channel", "adt", "--config", str(config))
        results.append(await invoke(*args))
        results.append(await invoke(*args, "--cert", str(client), "--key", str(client_key)))

    rig = run(tmp_path, test, source={"port": port, "tls": tls})
    try:
        without, withcert = results
        assert without.exit_code == 1 and "channel 'adt' requires a client certificate" in without.stderr
        assert withcert.exit_code == 0 and withcert.stdout == f"{path}: AA\n", withcert.output
    finally:
        rig.close()
