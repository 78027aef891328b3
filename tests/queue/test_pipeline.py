"""process → deliver through real Dramatiq actors (in-memory broker), with a mocked FHIR server."""

from __future__ import annotations

import threading
from pathlib import Path

import dramatiq
import httpx
import orjson
import pytest

from engine import hl7v2
from engine.config.channel import Channel
from engine.destinations import make_destination
from engine.errors import TransformError
from engine.pipeline import Pipeline
from engine.queue.actors import Actors
from engine.queue.broker import make_broker
from engine.queue.sweeper import Sweeper
from engine.store import NewMessage, Store
from engine.transform.limits import Limits
from tests.integration.harness import wait_until

RAW = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ORU^R01|C1|P|2.5.1\rPID|1||123^^^HOSP^MR\r"


class FakeMappings:
    """Stands in for the compiled mappings: one conditional Patient per message."""

    def __init__(self) -> None:
        self.calls = 0
        self.timezone = "UTC"

    def has_mapping(self, t: str) -> bool:
        return True

    limits = Limits()

    def transform(
        self,
        message: hl7v2.Message,
        *,
        mapping=None,
        validation="sampled",
        timezone=None,
        identifiers=None,
        strict=False,
    ) -> dict:
        self.calls += 1
        pid = message.first("PID")
        if pid is None:
            raise TransformError("PID segment is required", field="PID", code="100")
        mrn = pid.component(pid.field(3), 1)
        entry = {
            "fullUrl": "urn:uuid:00000000-0000-0000-0000-000000000001",
            "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
            "request": {"method": "PUT", "url": f"Patient?identifier=urn:mrn|{mrn}"},
        }
        return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}


class Server:
    """A scripted FHIR server: answers each POST with the next status in ``script`` (then 200)."""

    def __init__(self, *script: int, retry_after: str | None = None) -> None:
        self.script = list(script)
        self.retry_after = retry_after
        self.requests: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request.content)
            status = self.script.pop(0) if self.script else 200
        headers = {"Retry-After": self.retry_after} if self.retry_after and status == 503 else {}
        if status != 200:
            return httpx.Response(status, headers=headers, json={"resourceType": "OperationOutcome", "issue": []})
        body = {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created", "location": "Patient/1/_history/1"}}],
        }
        return httpx.Response(200, json=body)


@pytest.fixture
def rig(tmp_path: Path):
    created = []

    def build(server: Server, max_attempts: int = 5):
        store = Store(f"sqlite:///{tmp_path}/s.db")
        channel = Channel.model_validate(
            {
                "name": "lab",
                "source": {"type": "mllp", "port": 2575},
                "destinations": [
                    {
                        "name": "ehr",
                        "type": "fhir",
                        "base_url": "http://ehr.test/fhir",
                        "retry": {"max_attempts": max_attempts, "min_backoff_ms": 20, "max_backoff_ms": 50},
                    }
                ],
            }
        )
        mappings = FakeMappings()
        transport = httpx.MockTransport(server)
        pipeline = Pipeline(store, mappings, [channel], make=lambda c: make_destination(c, transport=transport))
        broker = make_broker("memory://")
        actors = Actors(broker, pipeline)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
        worker.start()
        created.append((worker, broker, pipeline, store))
        return store, actors, mappings

    yield build
    for worker, broker, pipeline, store in created:
        worker.stop()
        broker.close()
        pipeline.close()
        store.close()


def receive(store: Store, raw: bytes = RAW) -> str:
    [acc] = store.insert_messages([NewMessage(channel="lab", raw=raw)])
    return acc.id


def status(store: Store, mid: str) -> str:
    return store.message(mid).status


def test_happy_path(rig) -> None:
    server = Server()
    store, actors, _ = rig(server)
    mid = receive(store)
    actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "sent", 10, "sent")
    [a] = store.attempts_of(mid)
    assert (a.outcome, a.status_code, a.number) == ("sent", 200, 1)
    assert orjson.loads(server.requests[0])["type"] == "transaction"


def test_retry_on_503_honours_retry_after_then_delivers(rig) -> None:
    server = Server(503, 503, retry_after="1")
    store, actors, _ = rig(server)
    mid = receive(store)
    actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "sent", 15, "sent after retries")
    attempts = store.attempts_of(mid)
    assert [(a.outcome, a.status_code) for a in attempts] == [("retry", 503), ("retry", 503), ("sent", 200)]
    # Retry-After: 1 s was honoured between attempts, though the backoff alone would be ~50 ms
    assert attempts[1].started_at - attempts[0].started_at >= 0.95


def test_permanent_error_is_dead_lettered_and_replayable(rig) -> None:
    server = Server(400)
    store, actors, _ = rig(server)
    mid = receive(store)
    actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "dead", 10, "dead")
    [dead] = store.dead_letters()
    assert dead.message_id == mid and dead.last_status_code == 400 and "permanent" in dead.last_error
    for m, d in store.replay_dead(message_id=mid):
        actors.enqueue_deliver(m, d)
    wait_until(lambda: status(store, mid) == "sent", 10, "sent after replay")
    assert len(server.requests) == 2


def test_retries_exhausted_is_dead(rig) -> None:
    store, actors, _ = rig(Server(503, 503, 503), max_attempts=3)
    mid = receive(store)
    actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "dead", 10, "dead")
    assert store.delivery(mid, "ehr").attempts == 3
    assert "retries exhausted" in store.dead_letters()[0].last_error


def test_mapping_rejection_keeps_raw_with_error(rig) -> None:
    store, actors, _ = rig(Server())
    mid = receive(store, b"MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ORU^R01|C2|P|2.5.1\rOBX|1\r")
    actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "error", 10, "error")
    assert store.message(mid).error.startswith("PID: PID segment is required")


def test_processing_is_idempotent(rig) -> None:
    server = Server()
    store, actors, _ = rig(server)
    mid = receive(store)
    for _ in range(3):
        actors.enqueue_process([mid])
    wait_until(lambda: status(store, mid) == "sent", 10, "sent")
    actors.enqueue_deliver(mid, "ehr")
    actors.broker.join("process")
    actors.broker.join("deliver")
    assert len(server.requests) == 1
    assert len(store.deliveries_of(mid)) == 1


def test_sweeper_recovers_unqueued_work(rig) -> None:
    server = Server()
    store, actors, _ = rig(server)
    mids = [receive(store) for _ in range(5)]  # committed, never enqueued (a crash right after commit)
    sweeper = Sweeper(store, actors.enqueue_process, actors.enqueue_deliver, interval_s=60, grace_s=0)
    assert sweeper.sweep() == (5, 0)
    wait_until(lambda: all(status(store, m) == "sent" for m in mids), 10, "all sent")


def test_sweeper_leaves_a_backlog_alone(rig) -> None:
    store, actors, _ = rig(Server())
    mids = [receive(store) for _ in range(3)]
    waiting = {"process": 3}
    sweeper = Sweeper(
        store, actors.enqueue_process, actors.enqueue_deliver, waiting=lambda q: waiting.get(q, 0), grace_s=0
    )
    assert sweeper.sweep() == (0, 0)  # they are old, but the queue still holds work: not orphans
    waiting["process"] = 0
    assert sweeper.sweep() == (3, 0)
    wait_until(lambda: all(status(store, m) == "sent" for m in mids), 10, "all sent")


def test_channel_timezone_reaches_the_mapping(tmp_path: Path) -> None:
    from engine.transform import load_mappings
    from engine.transform.pool import InThreadMapper, Job

    mappings = load_mappings(Path(__file__).resolve().parents[2] / "mappings")
    raw = (
        b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|Z1|P|2.5.1\rPID|1||M1^^^H^MR||X^Y||19700101\r"
        b"PV1|1|I|||||||||||||||||V1^^^H|||||||||||||||||||||||||20240701120000\r"
    )
    [utc, paris] = InThreadMapper(mappings).map_many(
        [Job(raw, "utf-8", None, "off"), Job(raw, "utf-8", None, "off", "Europe/Paris")]
    )
    encounter = [e for e in orjson.loads(paris.bundle)["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter[0]["resource"]["period"]["start"] == "2024-07-01T12:00:00+02:00"
    assert b"2024-07-01T12:00:00Z" in utc.bundle or b"2024-07-01T12:00:00+00:00" in utc.bundle
