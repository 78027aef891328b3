"""Delivery ordering (per patient, strict, none) and the stale-write guard, through real Dramatiq actors
and a real SQLite store, with a scripted FHIR server (httpx.MockTransport).

Every message is ``ADT^A08`` for patient ``PID-3`` with its sequence number in ``PID-5.2`` and its event
time in ``EVN-2``; the stub mapping makes one conditional Patient from it, so what the server saw, in
which order, tells whether a patient's messages overtook each other.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from engine import hl7v2, ordering
from engine.cli import app
from engine.config.channel import Channel
from engine.destinations import make_destination
from engine.ingest import GroupCommitter, Ingest
from engine.pipeline import Pipeline
from engine.queue.actors import Actors
from engine.queue.broker import make_broker
from engine.queue.sweeper import Sweeper
from engine.sources.hl7 import HL7Acceptor
from engine.store import NewMessage, Store
from engine.transform.bundle import full_url
from engine.transform.limits import Limits
from tests.integration.harness import wait_until

BASE = "http://ehr.test/fhir"


def adt(mrn: str, seq: int, *, when: str | None = None) -> bytes:
    when = when or f"2024010{1 + seq // 86400}{seq % 86400 // 3600:02d}{seq % 3600 // 60:02d}{seq % 60:02d}"
    return (
        f"MSH|^~\\&|PAS|HOSP|EHR|HOSP|{when}||ADT^A08|{mrn}-{seq}|P|2.5.1\r"
        f"EVN|A08|{when}\rPID|1||{mrn}^^^HOSP^MR||DOE^{seq}\r"
    ).encode()


class StubMappings:
    """One conditional Patient per message, named after the message's sequence number."""

    timezone = "UTC"
    limits = Limits()

    def has_mapping(self, t: str) -> bool:
        return True

    def transform(self, message: hl7v2.Message, **_options: object) -> dict:
        pid = message.first("PID")
        assert pid is not None
        mrn = pid.component(pid.field(3), 1)
        seq = pid.component(pid.field(5), 2)
        resource = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": mrn}],
            "name": [{"family": "DOE", "given": [seq]}],
        }
        entry = {
            "fullUrl": full_url("Patient", "urn:mrn", mrn),
            "resource": resource,
            "request": {"method": "PUT", "url": f"Patient?identifier=urn:mrn|{mrn}"},
        }
        return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}


class Ehr:
    """A scripted FHIR server. ``fail(mrn, seq) -> status | None`` decides failures; every request that
    succeeds is recorded as (mrn, seq, method) in arrival order, and ``current`` holds the newest write."""

    def __init__(self) -> None:
        self.fail: Callable[[str, int], int | None] = lambda _m, _s: None
        self.applied: list[tuple[str, int, str]] = []
        self.current: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        entry = orjson.loads(request.content)["entry"][0]
        mrn = entry["resource"]["identifier"][0]["value"]
        seq = int(entry["resource"]["name"][0]["given"][0])
        time.sleep(random.random() / 500)  # let concurrent deliveries overtake each other if they can
        with self.lock:
            status = self.fail(mrn, seq)
            if status:
                return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": []})
            method = entry["request"]["method"]
            self.applied.append((mrn, seq, method))
            if method == "PUT" or mrn not in self.current:
                self.current[mrn] = seq
        reply = {"response": {"status": "200 OK", "location": f"Patient/{mrn}/_history/1"}}
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [reply]})

    def order(self, mrn: str) -> list[int]:
        with self.lock:
            return [s for m, s, _ in self.applied if m == mrn]


def channel(name: str = "adt", *, mode: str = "per_patient", on_dead: str = "hold", max_attempts: int = 50) -> Channel:
    return Channel.model_validate(
        {
            "name": name,
            "source": {"type": "mllp", "port": 0},
            "ordering": {"mode": mode, "on_dead": on_dead},
            "destinations": [
                {
                    "name": "ehr",
                    "type": "fhir",
                    "base_url": BASE,
                    "retry": {"max_attempts": max_attempts, "min_backoff_ms": 20, "max_backoff_ms": 60},
                }
            ],
        }
    )


class Rig:
    def __init__(self, tmp_path: Path, channels: list[Channel], threads: int = 4) -> None:
        self.store = Store(f"sqlite:///{tmp_path}/s.db")
        self.channels = {c.name: c for c in channels}
        self.ehr = Ehr()
        transport = httpx.MockTransport(self.ehr)
        self.pipeline = Pipeline(
            self.store, StubMappings(), channels, make=lambda c: make_destination(c, transport=transport)
        )
        self.broker = make_broker("memory://")
        self.actors = Actors(self.broker, self.pipeline)
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=20)
        self.worker.start()
        self.sweeper = Sweeper(self.store, self.actors.enqueue_process, self.actors.enqueue_deliver)

    def receive(self, raw: bytes, channel: str = "adt") -> str:
        """Commit as the accept path does (lane from PID-3); nothing is queued."""
        ch = self.channels[channel]
        text, header = hl7v2.read(raw)
        lane = ordering.lane(ch, hl7v2.patient_key(text, header.delimiters), self.store.pseudonym)
        [acc] = self.store.insert_messages([NewMessage(channel=channel, raw=raw, lane=lane)])
        return acc.id

    def delivery(self, mid: str) -> str | None:
        row = self.store.delivery(mid, "ehr")
        return row.status if row else None

    def close(self) -> None:
        self.worker.stop()
        self.broker.close()
        self.pipeline.close()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def build(*channels: Channel, threads: int = 4) -> Rig:
        made.append(Rig(tmp_path / str(len(made)), list(channels or [channel()]), threads))
        return made[-1]

    yield build
    for r in made:
        r.close()


def test_a_patient_waits_behind_its_retrying_message_while_others_go(rig) -> None:
    r = rig()
    down = threading.Event()
    down.set()
    r.ehr.fail = lambda mrn, seq: 503 if mrn == "A" and down.is_set() else None
    a1, a2, b1 = r.receive(adt("A", 1)), r.receive(adt("A", 2)), r.receive(adt("B", 1))
    r.actors.enqueue_process([a1, a2, b1])
    wait_until(lambda: r.store.message(b1).status == "sent", 10, "the other patient delivered")
    wait_until(lambda: len(r.store.attempts_of(a1)) >= 3, 10, "the first message retried")
    assert r.delivery(a2) == "waiting"
    assert r.store.attempts_of(a2) == []  # never tried while its predecessor retries
    down.clear()
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "the held message delivered")
    assert r.ehr.order("A") == [1, 2]
    assert r.ehr.current == {"A": 2, "B": 1}


def test_a_message_still_unprocessed_holds_later_ones(rig) -> None:
    r = rig()
    a1 = r.receive(adt("A", 1))
    a2 = r.receive(adt("A", 2))
    r.actors.enqueue_process([a2])  # the later one is mapped first
    wait_until(lambda: r.delivery(a2) == "waiting", 10, "the later message parked")
    r.actors.enqueue_process([a1])
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "both delivered")
    assert r.ehr.order("A") == [1, 2]


def test_a_dead_message_holds_its_patient_until_discarded(rig, tmp_path: Path) -> None:
    r = rig(channel(on_dead="hold"))
    r.ehr.fail = lambda mrn, seq: 422 if (mrn, seq) == ("A", 1) else None
    a1, a2, b1 = r.receive(adt("A", 1)), r.receive(adt("A", 2)), r.receive(adt("B", 1))
    r.actors.enqueue_process([a1, a2, b1])
    wait_until(lambda: r.delivery(a1) == "dead", 10, "the first message dead")
    wait_until(lambda: r.store.message(b1).status == "sent", 10, "the other patient delivered")
    r.sweeper.sweep(grace_s=0)  # a sweep re-checks the held message: still held
    time.sleep(0.3)
    assert r.delivery(a2) == "waiting"
    assert r.store.held() == 1
    assert r.store.held_behind(a1) == 1 and r.store.held_behind(b1) == 0
    # what an operator sees and does
    config = tmp_path / "engine.yaml"
    config.write_text(f"database_url: {r.store.url}\n")
    listing = CliRunner().invoke(app, ["dlq", "list", "--config", str(config)]).stdout
    assert a1 in listing and "holding 1 later message(s)" in listing
    assert "held in order behind an earlier message: 1" in CliRunner().invoke(app, ["status", "-c", str(config)]).stdout
    done = CliRunner().invoke(app, ["dlq", "discard", a1, "--reason", "fixed by hand", "-c", str(config)])
    assert done.exit_code == 0 and "1 delivery(ies) discarded" in done.stdout
    assert r.store.delivery(a1, "ehr").status == "discarded"
    r.sweeper.sweep(grace_s=0)
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "released after the discard")
    assert r.ehr.order("A") == [2]


def test_a_dead_message_is_skipped_by_policy(rig) -> None:
    r = rig(channel(on_dead="skip"))
    r.ehr.fail = lambda mrn, seq: 422 if (mrn, seq) == ("A", 1) else None
    a1, a2 = r.receive(adt("A", 1)), r.receive(adt("A", 2))
    r.actors.enqueue_process([a1, a2])
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "the next message delivered")
    assert r.delivery(a1) == "dead"


def test_strict_orders_every_patient_of_the_channel(rig) -> None:
    r = rig(channel(mode="strict"))
    down = threading.Event()
    down.set()
    r.ehr.fail = lambda mrn, seq: 503 if mrn == "A" and down.is_set() else None
    a1, b1 = r.receive(adt("A", 1)), r.receive(adt("B", 1))
    r.actors.enqueue_process([a1, b1])
    wait_until(lambda: len(r.store.attempts_of(a1)) >= 2, 10, "retrying")
    assert r.delivery(b1) == "waiting"
    down.clear()
    wait_until(lambda: r.store.message(b1).status == "sent", 10, "delivered in order")
    assert [m for m, _, _ in r.ehr.applied] == ["A", "B"]


def test_none_does_not_wait(rig) -> None:
    r = rig(channel(mode="none"))
    down = threading.Event()
    down.set()
    r.ehr.fail = lambda mrn, seq: 503 if (mrn, seq) == ("A", 1) and down.is_set() else None
    a1, a2 = r.receive(adt("A", 1)), r.receive(adt("A", 2))
    r.actors.enqueue_process([a1, a2])
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "the later message overtook")
    down.clear()
    wait_until(lambda: r.store.message(a1).status == "sent", 10, "the earlier one delivered too")
    # ...but the stale-write guard kept the newer data
    assert r.ehr.order("A") == [2, 1]
    assert r.ehr.current["A"] == 2
    assert r.ehr.applied[-1][2] == "POST"


def test_lanes_span_channels_that_write_to_the_same_ehr(rig) -> None:
    r = rig(channel("adt"), channel("lab"))
    down = threading.Event()
    down.set()
    r.ehr.fail = lambda mrn, seq: 503 if seq == 1 and down.is_set() else None
    a1 = r.receive(adt("A", 1), "adt")
    a2 = r.receive(adt("A", 2), "lab")
    r.actors.enqueue_process([a1])
    r.actors.enqueue_process([a2])
    wait_until(lambda: r.delivery(a2) == "waiting", 10, "the lab message held behind the ADT one")
    down.clear()
    wait_until(lambda: r.store.message(a2).status == "sent", 10, "delivered in order")
    assert r.ehr.order("A") == [1, 2]


def test_an_older_message_never_overwrites_newer_data(rig) -> None:
    r = rig()
    newer = r.receive(adt("A", 2, when="20240105120000"))
    r.actors.enqueue_process([newer])
    wait_until(lambda: r.store.message(newer).status == "sent", 10, "newer delivered")
    older = r.receive(adt("A", 1, when="20240101120000+0000"))  # arrives late (e.g. a resend after an outage)
    r.actors.enqueue_process([older])
    wait_until(lambda: r.store.message(older).status == "sent", 10, "older delivered")
    assert r.ehr.applied == [("A", 2, "PUT"), ("A", 1, "POST")]
    assert r.ehr.current["A"] == 2
    sent = orjson.loads(r.store.content(older, "sent", "ehr"))
    assert sent["entry"][0]["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=urn:mrn|A",
    }
    newest = r.receive(adt("A", 3, when="20240106120000"))
    r.actors.enqueue_process([newest])
    wait_until(lambda: r.store.message(newest).status == "sent", 10, "newest delivered")
    assert r.ehr.applied[-1] == ("A", 3, "PUT") and r.ehr.current["A"] == 3


def test_random_failures_never_reorder_a_patient(rig) -> None:
    """Many patients, 503s at random, 8 worker threads: each patient's writes reach the EHR in order."""
    r = rig(threads=8)
    rng = random.Random(7)
    r.ehr.fail = lambda mrn, seq: 503 if rng.random() < 0.3 else None
    ids = [r.receive(adt(f"P{p}", seq)) for seq in range(1, 16) for p in range(6)]
    for i in range(0, len(ids), 7):
        r.actors.enqueue_process(ids[i : i + 7])
    wait_until(lambda: all(r.store.message(m).status == "sent" for m in ids), 60, "all delivered", 0.2)
    for p in range(6):
        assert r.ehr.order(f"P{p}") == list(range(1, 16))


def test_accept_path_puts_a_message_in_its_patients_lane(tmp_path: Path) -> None:
    import asyncio

    store = Store(f"sqlite:///{tmp_path}/s.db")
    committer = GroupCommitter(store, lambda _ids: None)
    try:
        lanes = {}
        for mode in ("per_patient", "strict", "none"):
            ch = channel(mode=mode)
            ingest = HL7Acceptor(ch, ch.source, Ingest(committer), has_mapping=lambda _t: True)
            for raw in (adt("A", 1), adt("A", 2), adt("B", 1)):
                reply = asyncio.run(ingest.handle(raw, "peer"))
                lanes[(mode, raw)] = store.message(reply.message_id).lane
        assert lanes[("per_patient", adt("A", 1))] == lanes[("per_patient", adt("A", 2))] != ""
        assert lanes[("per_patient", adt("A", 1))] != lanes[("per_patient", adt("B", 1))]
        # a keyed hash: this installation's key, not a hash anyone could compute from a guessed identifier
        assert lanes[("per_patient", adt("A", 1))] == "p:" + store.pseudonym("patient\x1fA")
        other = Store(f"sqlite:///{tmp_path}/other.db")
        assert other.pseudonym("patient\x1fA") != store.pseudonym("patient\x1fA")
        other.close()
        assert len({lanes[("strict", raw)] for raw in (adt("A", 1), adt("B", 1))}) == 1
        assert {lanes[("none", raw)] for raw in (adt("A", 1), adt("B", 1))} == {""}
    finally:
        committer.close()
        store.close()


def test_patient_key_prefers_the_mr_identifier() -> None:
    d = hl7v2.DEFAULT_DELIMITERS
    msh = "MSH|^~\\&|A|B|C|D|2024||ADT^A08|1|P|2.5"
    assert hl7v2.patient_key(f"{msh}\rPID|1||9^^^X^PI~12^^^H^MR||D\r", d) == "12"
    assert hl7v2.patient_key(f"{msh}\rPID|1||9^^^X^PI~12^^^H\r", d) == "9"
    assert hl7v2.patient_key(f"{msh}\nPID|1||77\n", d) == "77"
    assert hl7v2.patient_key(f"{msh}\rPID|1||\r", d) == ""
    assert hl7v2.patient_key(f"{msh}\rPV1|1|I\r", d) == ""
