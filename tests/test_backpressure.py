"""Back-pressure (engine/backpressure.py): a channel takes messages up to its ``refuse_at`` backlog, refuses the
next one uncommitted with its protocol's "busy" (MLLP AE, webhook 503, DICOM 0xA700), and takes them again
once the backlog drains; past ``slow_at`` replies wait after the commit. A real engine with its workers off
(nothing drains until the test processes the messages through the real pipeline)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pynetdicom import AE, StoragePresentationContexts

from engine import hl7v2
from engine.backpressure import Backlog, BacklogSettings, Bounds
from engine.errors import Busy, ConfigError
from engine.ingest import GroupCommitter, Ingest, Meta
from engine.settings import Settings
from engine.sources.mllp_client import send
from engine.store import MessageStatus, Store
from tests.api.running import RunningEngine, webhook_channel
from tests.integration.dicom_data import make_study

ORU = (
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||123^^^HOSP^MR||DOE^JANE||19800101|F\r"
    "OBR|1||F1|GLU^Glucose\r"
    "OBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F\r"
)
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}]}
FIVE = {"slow_at": 0, "refuse_at": 5}


# -- the counts and bounds alone -----------------------------------------------------------------------


def test_the_delay_rises_from_slow_at_to_slow_ms_at_refuse_at() -> None:
    b = Bounds(slow_at=100, refuse_at=300, slow_s=0.2)
    assert [b.delay_s(n) for n in (50, 100, 200, 300, 900)] == [0.0, 0.0, pytest.approx(0.1), 0.2, 0.2]
    assert Bounds(slow_at=10, refuse_at=0, slow_s=0.05).delay_s(11) == 0.05  # never refused: the whole delay
    assert Bounds(slow_at=0, refuse_at=5, slow_s=0.05).delay_s(4) == 0.0  # never slowed


def test_bounds_out_of_order_are_refused_naming_the_channel() -> None:
    with pytest.raises(ValueError, match="slow_at"):
        BacklogSettings(slow_at=10, refuse_at=10)
    with pytest.raises(ValueError, match="slow_at"):
        Settings.model_validate({"backlog": {"slow_at": 50, "refuse_at": 20}})
    with pytest.raises(ConfigError, match="channel lab: backlog: slow_at"):
        from engine.backpressure import channel_bounds
        from engine.config.channel import Channel

        ch = Channel.model_validate(
            {"name": "lab", "source": {"type": "mllp", "port": 0}, "backlog": {"slow_at": 30_000},
             "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}]}
        )  # fmt: skip
        channel_bounds(BacklogSettings(), [ch])


def test_reserve_refuses_at_the_bound_and_a_commit_during_a_resync_is_not_lost() -> None:
    refused: list[str] = []
    store_says = {"lab": 3}
    backlog = Backlog({"lab": Bounds(0, 5, 0)}, lambda: dict(store_says), refused=refused.append)
    backlog.resync()
    for _ in range(2):
        backlog.reserve("lab")
        backlog.settle("lab", 1, 1)
    with pytest.raises(Busy):
        backlog.reserve("lab")
    assert refused == ["lab"] and backlog.counts() == {"lab": 5}
    # a batch takes room for all its messages or none
    store_says["lab"] = 2
    backlog.resync()
    with pytest.raises(Busy):
        backlog.reserve("lab", 4)
    backlog.reserve("lab", 3)
    backlog.settle("lab", 3, 1)  # two were duplicates: finished at once
    assert backlog.counts() == {"lab": 3}

    # a commit settled while the store is read may or may not be in what it says: counted rather than lost
    def read_while_committing() -> dict[str, int]:
        racing.reserve("lab")
        racing.settle("lab", 1, 1)
        return {"lab": 0}

    racing = Backlog({"lab": Bounds(0, 5, 0)}, read_while_committing)
    racing.resync()
    assert racing.counts() == {"lab": 1}
    empty = Backlog({"lab": Bounds(0, 5, 0)}, lambda: {})
    empty.reserve("lab", 8)  # a batch larger than the bound: taken when nothing else waits, else never
    with pytest.raises(Busy):
        empty.reserve("lab", 1)
    backlog.reserve("other")  # a channel without bounds is never refused
    assert backlog.settle("other", 1, 1) == 0.0


def test_the_ingest_writer_commits_before_the_slow_reply(tmp_path: Path) -> None:
    from engine.config.channel import Channel

    store = Store(f"sqlite:///{tmp_path}/s.db")
    committer = GroupCommitter(store, lambda ids: None)
    ch = Channel.model_validate(
        {"name": "lab", "source": {"type": "mllp", "port": 0},
         "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}]}
    )  # fmt: skip
    backlog = Backlog({"lab": Bounds(1, 0, 0.3)}, store.backlog_by_channel)
    ingest = Ingest(committer, backlog)
    seen: list[int] = []

    async def two() -> list[float]:
        took = []
        for cid in ("A", "B"):
            t0 = time.perf_counter()
            task = asyncio.create_task(ingest.accept(ch, ORU.format(cid=cid).encode(), Meta(control_id=cid)))
            while not task.done():
                await asyncio.sleep(0.02)
                seen.append(sum(store.backlog_by_channel().values()))
            await task
            took.append(time.perf_counter() - t0)
        return took

    try:
        _, second = asyncio.run(two())
    finally:
        committer.close()
        store.close()
    assert second >= 0.3  # the second one is over slow_at = 1: its answer waited (never an upper bound)
    assert 2 in seen  # ...while it was already committed


# -- every source against a real engine ------------------------------------------------------------------


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp = tmp_path_factory.mktemp("backpressure")
    out = tmp / "out"
    channels = [
        {
            "name": "lab",
            "source": {"type": "mllp", "port": 0, "accept": ["ORU^R01"]},
            "identifiers": {"authority": "HOSP"},
            "backlog": FIVE,
            "destinations": [{"name": "out", "type": "file", "path": str(out / "lab.ndjson")}],
        },
        {**webhook_channel("events", out=out), "backlog": FIVE},
        {
            "name": "imaging",
            "source": {"type": "dicom", "port": 0, "objects_dir": str(tmp / "objects"), "fsync": False,
                       "quiet_period_s": 0.2},
            "backlog": FIVE,
            "destinations": [{"name": "out", "type": "file", "path": str(out / "imaging.ndjson")}],
        },
        {**webhook_channel("slow", out=out), "backlog": {"slow_at": 1, "refuse_at": 0, "slow_ms": 300}},
    ]  # fmt: skip
    # resync_s: long, so that only the test's resync() lets a drained backlog in
    with RunningEngine(tmp, channels, workers=False, hl7_maps=True, backlog={"resync_s": 60}) as running:
        yield running


def stored(eng: RunningEngine, channel: str) -> list:
    return eng.engine.store.list_messages(channel=channel, limit=10_000)


def drain(eng: RunningEngine, channel: str) -> None:
    """Process and deliver the channel's messages through the real pipeline (file destination), as the workers
    would (each unsent delivery tried again in arrival order: one patient's go one at a time, and the
    engine's sweeper may have released a waiting one first), then resync the counts."""
    pipeline, store = eng.engine.pipeline, eng.engine.store
    ids = sorted(m.id for m in stored(eng, channel) if m.status == MessageStatus.received)
    pipeline.process_many(ids, deliver_inline=True)
    for _ in range(len(ids) + 1):
        unsent = [(d.message_id, d.destination) for i in ids for d in store.deliveries_of(i) if d.status != "sent"]
        if not unsent:
            break
        for message_id, destination in unsent:
            pipeline.deliver(message_id, destination)
    assert all(m.status == MessageStatus.sent for m in stored(eng, channel) if m.id in ids)
    eng.engine.backlog.resync()


def metric(eng: RunningEngine, name: str, channel: str) -> float | None:
    return eng.engine.metrics.registry.get_sample_value(name, {"channel": channel})


def ack(reply: bytes) -> str:
    return hl7v2.Message.parse(reply.decode()).first("MSA").field(1)


def test_mllp_takes_five_then_answers_ae_busy_and_stores_nothing(eng: RunningEngine) -> None:
    port = eng.engine.sources["lab"].port  # type: ignore[attr-defined]
    replies = send("127.0.0.1", port, [ORU.format(cid=f"M{i}").encode() for i in range(6)])
    assert [ack(r) for r in replies] == ["AA"] * 5 + ["AE"]
    assert "busy" in replies[5].decode() and "retry" in replies[5].decode()
    assert len(stored(eng, "lab")) == 5
    assert metric(eng, "interlink_backlog_refused_total", "lab") == 1
    assert metric(eng, "interlink_channel_backlog", "lab") == 5
    drain(eng, "lab")
    [again] = send("127.0.0.1", port, [ORU.format(cid="M5").encode()])
    assert ack(again) == "AA" and len(stored(eng, "lab")) == 6


def test_webhook_takes_five_then_answers_503_busy_with_retry_after(eng: RunningEngine) -> None:
    with httpx.Client(base_url=eng.url, timeout=10) as client:

        def post() -> httpx.Response:
            return client.post("/webhooks/events", content=orjson.dumps(PATIENT),
                               headers={"content-type": "application/fhir+json"})  # fmt: skip

        assert [post().status_code for _ in range(5)] == [202] * 5
        busy = post()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["type"] == "urn:interlink:problem:busy" and "message_id" not in busy.json()
        assert len(stored(eng, "events")) == 5
        drain(eng, "events")
        assert post().status_code == 202 and len(stored(eng, "events")) == 6


def test_dicom_takes_five_instances_then_answers_a700_and_keeps_no_object(eng: RunningEngine, tmp_path: Path) -> None:
    source = eng.engine.sources["imaging"]
    files = make_study(tmp_path / "in", 1, 7)
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", source.port, ae_title="INTERLINK")  # type: ignore[attr-defined]
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(f).Status) for f in files[:6]]
    finally:
        assoc.release()
    assert statuses == [0] * 5 + [0xA700]
    assert len(stored(eng, "imaging")) == 5  # the refused instance: no message...
    objects = [p for p in (eng.settings.data_dir.parent / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 5  # ...and no object
    # the five held instances become one study message (not bounded: made of what was already taken)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the study message is committed, then its instances become grouped
        found = stored(eng, "imaging")
        if any(m.message_type == "study" for m in found) and all(m.status != MessageStatus.held for m in found):
            break
        time.sleep(0.05)
    eng.engine.backlog.resync()
    assert eng.engine.backlog.counts()["imaging"] == 1
    ae2 = AE(ae_title="MODALITY")
    ae2.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae2.associate("127.0.0.1", source.port, ae_title="INTERLINK")  # type: ignore[attr-defined]
    try:
        assert int(assoc.send_c_store(files[6]).Status) == 0
    finally:
        assoc.release()


def test_over_slow_at_the_reply_waits_after_the_commit(eng: RunningEngine) -> None:
    body = orjson.dumps(PATIENT)
    headers = {"content-type": "application/fhir+json"}
    with httpx.Client(base_url=eng.url, timeout=10) as client:
        assert client.post("/webhooks/slow", content=body, headers=headers).status_code == 202
        counted: list[int] = []
        done = threading.Event()

        def watch() -> None:  # the second message is committed while its answer still waits
            while not done.is_set():
                counted.append(len(stored(eng, "slow")))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.perf_counter()
        r = client.post("/webhooks/slow", content=body, headers=headers)
        took = time.perf_counter() - t0
        done.set()
        watcher.join()
    assert r.status_code == 202 and took >= 0.3
    assert 2 in counted
