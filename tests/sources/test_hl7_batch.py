"""HL7 batches (FHS/BHS) over real MLLP and over the webhook, and the caps at the source.

Each message of a batch is checked and stored on its own, all of them in one transaction before the one
batch acknowledgement; a batch whose counts or size break the rules is refused whole and stored once with
its error. The batches are fictitious (the corpus has none).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config.channel import Channel
from engine.errors import ConfigError, StoreUnavailable
from engine.ingest import GroupCommitter, Ingest
from engine.metrics import Metrics
from engine.sources import hl7_batch
from engine.sources.base import SourceContext
from engine.sources.hl7 import channel_limits
from engine.sources.mllp import MLLPSource, build, frame
from engine.sources.mllp_client import send_messages
from engine.store import ContentKind, MessageStatus, Store
from engine.transform.limits import Limits
from tests.api.running import RunningEngine, webhook_channel
from tests.integration.procfs import rss

LOOPBACK = "127.0.0.1"


def msg(cid: str, mtype: str = "ADT^A01", extra: str = "") -> bytes:
    return (
        f"MSH|^~\\&|ADM|HOSP|EHR|CLINIC|20240101120000||{mtype}|{cid}|P|2.5.1\r"
        f"EVN|A01|20240101120000\rPID|1||{cid}-MRN^^^HOSP^MR||FICTION^ANNA||19800101|F\r"
        "PV1|1|I|W1^1^1\r" + extra
    ).encode()


def batch(*messages: bytes, bts: int | None = None, fts: int | None = 1, bid: str = "B1") -> bytes:
    """FHS BHS messages BTS FTS; ``bts`` defaults to the true count, ``fts=None`` leaves out FHS/FTS."""
    count = len(messages) if bts is None else bts
    body = f"BHS|^~\\&|ADM|HOSP|EHR|CLINIC|20240101120000||||{bid}\r".encode() + b"".join(messages)
    body += f"BTS|{count}\r".encode()
    if fts is None:
        return body
    return b"FHS|^~\\&|ADM|HOSP|EHR|CLINIC|20240101120000||||F1\r" + body + f"FTS|{fts}\r".encode()


def segments(reply: bytes) -> list[list[str]]:
    return [s.split("|") for s in reply.decode().split("\r") if s]


def named(reply: bytes, name: str) -> list[list[str]]:
    return [s for s in segments(reply) if s[0] == name]


def channel(**over: Any) -> Channel:
    source = {"type": "mllp", "port": 0, "max_frame_bytes": 8 * 1024 * 1024, **over.pop("source", {})}
    data = {"name": "adt", "source": source, "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}]}
    return Channel.model_validate({**data, **over})


class Rig:
    """A store, the group committer and an MLLP source built as the runtime builds it, on a free port."""

    def __init__(self, tmp: Path, ch: Channel, limits: Limits) -> None:
        self.store = Store(f"sqlite:///{tmp}/store.db")
        self.enqueued: list[str] = []
        self.committer = GroupCommitter(self.store, self.enqueued.extend)
        ctx = SourceContext(
            channel=ch,
            ingest=Ingest(self.committer),
            has_mapping=lambda t: t == "ADT^A01",
            transform_now=None,
            metrics=Metrics(),
            limits=limits,
        )
        self.source: MLLPSource = build(ctx)

    async def send(self, *frames: bytes) -> list[bytes]:
        return await send_messages(LOOPBACK, self.source.port, list(frames), timeout_s=10)

    def rows(self, status: str | None = None) -> list[Any]:
        return self.store.list_messages(channel="adt", status=status, limit=1000)

    def raw(self, row: Any) -> bytes:
        return self.store.content(row.id, ContentKind.raw) or b""

    def close(self) -> None:
        self.committer.close()
        self.store.close()


def run(tmp: Path, test: Callable[[Rig], Awaitable[None]], *, caps: Limits | None = None, **over: Any) -> Rig:
    rig = Rig(tmp, channel(**over), caps or Limits())

    async def main() -> None:
        await rig.source.start()
        try:
            async with asyncio.timeout(30):
                await test(rig)
        finally:
            await rig.source.stop()

    try:
        asyncio.run(main())
    finally:
        rig.committer.close()
    return rig


# -- splitting --------------------------------------------------------------------------------------


def test_split_keeps_each_message_byte_exact_across_several_batches() -> None:
    a, b, c = msg("A1"), msg("A2"), msg("A3")
    raw = (
        b"\xef\xbb\xbf\r\nFHS|^~\\&|ADM|HOSP|||||||F9\n"
        b"BHS|^~\\&|ADM|HOSP|||||||B1\r" + a + b + b"BTS|2\r"
        b"BHS|^~\\&|ADM|HOSP|||||||B2\r" + c + b"BTS|1\rFTS|2\r"
    )
    assert hl7_batch.is_batch(raw)
    found = hl7_batch.split(raw, 10)
    assert [p.messages for p in found.parts] == [[a, b], [c]]
    assert found.control_id == "B1" and found.file_header is not None and found.file_header[11] == "F9"
    no_envelope = hl7_batch.split(b"BHS|^~\\&\r" + a + b, 10)  # BTS/FTS optional, no FHS
    assert no_envelope.messages == [a, b] and no_envelope.file_header is None
    assert not hl7_batch.is_batch(a)


@pytest.mark.parametrize(
    ("raw", "location", "code"),
    [
        (batch(msg("A1"), msg("A2"), bts=3), "BTS^1^1", "207"),
        (batch(msg("A1"), fts=2), "FTS^1^1", "207"),
        (batch(msg("A1"), bts=0).replace(b"BTS|0", b"BTS|two"), "BTS^1^1", "102"),
        (b"BHS|^~\\&\rPID|1\r" + msg("A1"), "PID", "100"),
        (batch(msg("A1")) + msg("A2"), "FTS", "100"),
        (b"BHS|^~\\&\r" + msg("A1") + b"BTS|1\r" + msg("A2"), "BTS", "100"),
        (b"BHSX\r" + msg("A1"), "BHS^1^2", "102"),
    ],
)
def test_envelope_errors_refuse_the_whole_batch(raw: bytes, location: str, code: str) -> None:
    with pytest.raises(hl7_batch.BatchError) as caught:
        hl7_batch.split(raw, 10)
    assert (caught.value.location, caught.value.code, caught.value.reject) == (location, code, True)
    assert "FICTION" not in caught.value.message and "A1" not in caught.value.message


# -- over MLLP --------------------------------------------------------------------------------------


def test_batch_of_three_with_one_bad_message(tmp_path: Path) -> None:
    """Two stored and queued, the bad one stored with its error; one batch ACK listing only the error."""
    good1, bad, good2 = msg("G1"), msg("X1", "ZZZ^Z01"), msg("G2")
    raw = batch(good1, bad, good2)
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        replies.extend(await rig.send(raw, raw))  # the second: the same batch resent

    rig = run(tmp_path, test)
    try:
        first, again = replies
        names = [s[0] for s in segments(first)]
        assert names == ["FHS", "BHS", "MSH", "MSA", "ERR", "BTS", "FTS"]
        (fhs,), (bhs,), (bts,), (fts,) = (named(first, n) for n in ("FHS", "BHS", "BTS", "FTS"))
        # split on "|": item n is field n+1 of FHS/BHS (FHS-1 is the separator itself)
        assert fhs[2:6] == ["EHR", "CLINIC", "ADM", "HOSP"] and fhs[10] and fhs[11] == "F1"
        assert bhs[11] == "B1" and bts[1] == "1" and fts[1] == "1"
        (msa,), (err,) = named(first, "MSA"), named(first, "ERR")
        assert msa[1:3] == ["AR", "X1"] and err[2] == "MSH^1^9" and err[3].startswith("200^")
        received = sorted(rig.rows(MessageStatus.received), key=lambda r: r.control_id)
        assert [r.control_id for r in received] == ["G1", "G2"]
        assert [rig.raw(r) for r in received] == [good1, good2]  # byte-exact slices of the batch
        assert len(rig.rows(MessageStatus.error)) == 2  # the bad one, each time
        assert len(rig.enqueued) == 2  # the resend queued nothing
        # The resend: nothing new (duplicates of G1/G2), the same errors acknowledged.
        assert len(rig.rows(MessageStatus.duplicate)) == 2
        assert [s[0] for s in segments(again)] == names and named(again, "MSA")[0][1:3] == ["AR", "X1"]
    finally:
        rig.close()


def test_batch_ack_all_acknowledges_every_message_and_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        insert = rig.store.insert_messages

        def spy(messages: Any) -> Any:
            calls.append(len(messages))
            return insert(messages)

        monkeypatch.setattr(rig.store, "insert_messages", spy)
        replies.extend(await rig.send(batch(msg("A1"), msg("A2"), msg("A3"), fts=None)))

    rig = run(tmp_path, test, source={"batch_ack": "all"})
    try:
        (reply,) = replies
        assert [s[0] for s in segments(reply)] == ["BHS"] + ["MSH", "MSA"] * 3 + ["BTS"]
        assert [m[1:3] for m in named(reply, "MSA")] == [["AA", "A1"], ["AA", "A2"], ["AA", "A3"]]
        assert named(reply, "BTS")[0][1] == "3"
        assert calls == [3]  # the three in one transaction
    finally:
        rig.close()


def test_several_batches_in_one_file_are_answered_batch_by_batch(tmp_path: Path) -> None:
    raw = (
        b"FHS|^~\\&|ADM|HOSP|EHR|CLINIC|||||F2\r"
        + batch(msg("P1"), msg("P2", "ZZZ^Z01"), fts=None, bid="B1")
        + batch(msg("P3"), fts=None, bid="B2")
        + b"FTS|2\r"
    )
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        replies.extend(await rig.send(raw))

    run(tmp_path, test).close()
    names = [s[0] for s in segments(replies[0])]
    assert names == ["FHS", "BHS", "MSH", "MSA", "ERR", "BTS", "BHS", "BTS", "FTS"]
    assert [b[11] for b in named(replies[0], "BHS")] == ["B1", "B2"]
    assert [b[1] for b in named(replies[0], "BTS")] == ["1", "0"] and named(replies[0], "FTS")[0][1] == "2"


def test_store_failure_refuses_the_whole_batch_and_keeps_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed commit keeps none of the batch (one transaction): the sender gets one AE for the batch."""
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        def fail(messages: Any) -> Any:
            raise StoreUnavailable("message store commit failed (OperationalError)")

        monkeypatch.setattr(rig.store, "insert_messages", fail)
        replies.extend(await rig.send(batch(msg("A1"), msg("A2"))))

    rig = run(tmp_path, test)
    try:
        (reply,) = replies
        (msa,) = named(reply, "MSA")
        assert msa[1:3] == ["AE", "B1"]  # MSA-2: the batch's control id
        assert rig.rows() == [] and rig.enqueued == []
    finally:
        rig.close()


@pytest.mark.parametrize(
    ("raw", "limits", "location", "text"),
    [
        (batch(msg("A1"), msg("A2"), bts=5), Limits(), "BTS^1^1", "BTS-1"),
        (batch(msg("A1"), msg("A2"), msg("A3")), Limits(max_batch_messages=2), "BTS^1^1", "max_batch_messages = 2"),
    ],
    ids=["count-mismatch", "over-message-cap"],
)
def test_batch_refused_whole(tmp_path: Path, raw: bytes, limits: Limits, location: str, text: str) -> None:
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        replies.extend(await rig.send(raw))

    rig = run(tmp_path, test, caps=limits)
    try:
        (reply,) = replies
        (msa,), (err,) = named(reply, "MSA"), named(reply, "ERR")
        assert msa[1:3] == ["AR", "B1"] and text in msa[3] and err[2] == location
        assert named(reply, "BHS")[0][11] == "B1" and named(reply, "BTS")[0][1] == "1"
        (row,) = rig.rows()  # stored once, as it came, with its error; nothing queued
        assert row.status == MessageStatus.error and text in (row.error or "")
        assert rig.raw(row) == raw and rig.enqueued == []
    finally:
        rig.close()


def test_channel_limits_lower_the_engine_caps_and_may_not_raise_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="may lower the engine's limits, not raise them: max_segments"):
        channel_limits(Limits(max_segments=10), channel(limits={"max_segments": 20}))
    replies: list[bytes] = []

    async def test(rig: Rig) -> None:
        replies.extend(await rig.send(msg("S1", extra="NTE|1\r" * 5), msg("S2")))

    rig = run(tmp_path, test, caps=Limits(max_segments=10), limits={"max_segments": 6})
    try:
        over, ok = (named(r, "MSA")[0] for r in replies)
        assert over[1:3] == ["AR", "S1"] and "max_segments = 6" in over[3] and ok[1:3] == ["AA", "S2"]
    finally:
        rig.close()


def test_oversize_frame_refused_while_reading_within_seconds(tmp_path: Path) -> None:
    """A 50 MB frame against a 1 MiB max_bytes: an AR naming the cap within seconds, only the cap kept in
    memory and stored, and the connection stays usable (the next frame is answered)."""
    cap = 1024 * 1024
    big = msg("BIG", extra="NTE|1||" + "x" * (50 * 1024 * 1024) + "\r")
    replies: list[bytes] = []
    took: list[float] = []
    grew: list[int] = []

    async def test(rig: Rig) -> None:
        import os

        before = rss(os.getpid())
        reader, writer = await asyncio.open_connection(LOOPBACK, rig.source.port)
        t0 = time.perf_counter()
        view = memoryview(big)
        writer.write(b"\x0b")
        for at in range(0, len(big), 1 << 20):  # no copy of the 50 MB in the client's write buffer
            writer.write(view[at : at + (1 << 20)])
            await writer.drain()
        writer.write(b"\x1c\r" + frame(msg("NEXT")))
        await writer.drain()
        for _ in range(2):
            replies.append((await reader.readuntil(b"\x1c\r"))[1:-2])
        took.append(time.perf_counter() - t0)
        grew.append(rss(os.getpid()) - before)
        writer.close()

    rig = run(tmp_path, test, caps=Limits(max_bytes=cap))
    try:
        over, nxt = (named(r, "MSA")[0] for r in replies)
        assert over[1:3] == ["AR", "BIG"] and f"over the cap max_bytes = {cap}" in over[3]
        assert nxt[1:3] == ["AA", "NEXT"]
        assert took[0] < 10, took
        assert grew[0] < 30 * 1024 * 1024, grew  # far below the 50 MB sent: not buffered whole
        assert [len(rig.raw(r)) for r in rig.rows(MessageStatus.error)] == [cap]
        assert rig.source.stats.oversize == 1
    finally:
        rig.close()


def test_hundred_thousand_repetitions_refused_within_seconds(tmp_path: Path) -> None:
    bomb = msg("REP", extra="NTE|1||" + "~".join(["x"] * 100_000) + "\r")
    replies: list[bytes] = []
    took: list[float] = []

    async def test(rig: Rig) -> None:
        t0 = time.perf_counter()
        replies.extend(await rig.send(bomb))
        took.append(time.perf_counter() - t0)

    rig = run(tmp_path, test)
    try:
        (msa,), (err,) = named(replies[0], "MSA"), named(replies[0], "ERR")
        assert msa[1:3] == ["AR", "REP"] and "max_repetitions = 1000" in msa[3] and err[2] == "NTE^1^3"
        assert took[0] < 10, took
    finally:
        rig.close()


def test_interlink_send_sends_a_batch_file_as_one_frame(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    path = tmp_path / "batch.hl7"
    path.write_bytes(batch(msg("C1"), msg("C2", "ZZZ^Z01")).replace(b"\r", b"\n"))  # a file with LF endings
    outputs: list[Any] = []

    async def test(rig: Rig) -> None:
        args = ["send", str(path), "--port", str(rig.source.port), "--timeout-s", "10"]
        outputs.append(await asyncio.to_thread(CliRunner().invoke, app, args))

    rig = run(tmp_path, test)
    try:
        (result,) = outputs
        assert result.exit_code == 1, result.output
        assert ": AR batch: 1 not accepted: no mapping for message type" in result.output
        assert len(rig.rows(MessageStatus.received)) == 1 and len(rig.rows(MessageStatus.error)) == 1
    finally:
        rig.close()


# -- over HTTP --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("webhook-batch")
    ch = webhook_channel("hl7in", out=tmp, accepts=["hl7v2"])
    # A map that takes ADT^A01 and maps nothing: the source only asks whether one exists (the shipped
    # maps take 15 s to compile).
    maps = tmp / "no-maps" / "hl7v2" / "messages"
    maps.mkdir(parents=True)
    (maps / "ADT_A01.yaml").write_text("description: Takes ADT^A01.\naccepts: [ADT^A01]\nresources: {}\n")
    with RunningEngine(tmp, [ch], workers=False) as running:
        yield running


def test_webhook_batch_lists_every_message_and_its_problem(engine: RunningEngine) -> None:
    raw = batch(msg("W1"), msg("W2", "ZZZ^Z01"), msg("W3"), bid="WB")
    headers = {"content-type": "application/hl7-v2"}
    r = httpx.post(f"{engine.url}/webhooks/hl7in", content=raw, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["batch"] == "WB"
    assert [m["ack"] for m in body["messages"]] == ["AA", "AR", "AA"]
    bad = body["messages"][1]
    assert bad["hl7_code"] == "200" and bad["problem"].startswith("MSH^1^9: ")
    for m in body["messages"]:
        status = httpx.get(f"{engine.url}{m['status_url']}", timeout=10).json()
        assert status["status"] == ("error" if m["ack"] == "AR" else "received")
    again = httpx.post(f"{engine.url}/webhooks/hl7in", content=raw, headers=headers, timeout=30).json()
    assert [m["message_id"] for m in again["messages"]][::2] == [m["message_id"] for m in body["messages"]][::2]

    refused = httpx.post(f"{engine.url}/webhooks/hl7in", content=batch(msg("W4"), bts=2), headers=headers, timeout=30)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["hl7_code"] == "207" and "BTS-1" in problem["detail"] and problem["message_id"]
