"""The event feed against a real store (SQLite in a temporary folder) and an httpx.MockTransport receiver:
what it reads, in what order, how far it records, and that it neither skips nor repeats across restarts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import insert, update

from engine.destinations.http import HttpDestination
from engine.events_feed import EventFeed, EventsConfig
from engine.store import Store
from engine.store.repository import NewMessage
from engine.store.schema import deliveries, messages


class Receiver:
    def __init__(self, script: list[int] | None = None) -> None:
        self.script = script or []
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.headers["webhook-id"], orjson.loads(request.content)))
        return httpx.Response(self.script.pop(0) if self.script else 204)

    def events(self) -> list[dict[str, Any]]:
        return [e for _, body in self.requests for e in body["events"]]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path}/feed.db")
    yield s
    s.close()


def config(**kw: Any) -> EventsConfig:
    dest = {"type": "http", "name": "feed", "url": "http://subscriber.test/feed", "retry": {"min_backoff_ms": 1,
            "max_backoff_ms": 5}, "signing": {"secret_env": "FEED_TEST_SECRET"}}  # fmt: skip
    return EventsConfig.model_validate({"destination": dest, "settle_s": 0, **kw})


def feed(store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> EventFeed:
    monkeypatch.setenv("FEED_TEST_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=")
    cfg = config(**kw)
    dest = HttpDestination(cfg.destination, transport=httpx.MockTransport(receiver))
    return EventFeed(store, "lab", cfg, dest)


def receive(store: Store, n: int, channel: str = "lab") -> list[str]:
    batch = [NewMessage(channel, b"MSH|^~\\&|SECRET-CONTENT") for _ in range(n)]
    store.insert_messages(batch)
    return [m.id for m in batch]


def deliver(store: Store, message_id: str, destination: str, status: str) -> None:
    now = time.time()
    with store.work.begin() as conn:
        done = conn.execute(update(deliveries).where(deliveries.c.message_id == message_id,
                            deliveries.c.destination == destination).values(status=status, updated_at=now))  # fmt: skip
        if not done.rowcount:
            conn.execute(insert(deliveries).values(message_id=message_id, destination=destination, status=status,
                                                   attempts=1, next_attempt_at=now, updated_at=now))  # fmt: skip


def test_every_kind_once_in_order_without_content(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Receiver()
    f = feed(store, r, monkeypatch)
    a, b = receive(store, 2)
    receive(store, 1, channel="other")  # another channel's message: not in this feed
    deliver(store, a, "ehr", "sent")
    deliver(store, b, "ehr", "dead")
    with store.work.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == b).values(status="error", updated_at=time.time()))
    f.step()
    assert f.step() is False and len(r.requests) == 1  # nothing new: nothing sent
    events = r.events()
    assert [(e["type"], e["message_id"], e.get("destination")) for e in events] == [
        ("message.received", a, None), ("message.received", b, None),
        ("delivery.sent", a, "ehr"), ("delivery.dead", b, "ehr"), ("message.error", b, None),
    ]  # fmt: skip
    assert b"SECRET" not in orjson.dumps(r.requests)


def test_a_refused_batch_is_retried_with_its_webhook_id_and_never_skipped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Receiver(script=[400, 503, 204])
    f = feed(store, r, monkeypatch)
    receive(store, 3)
    f.step()
    assert len(r.requests) == 3 and len({wid for wid, _ in r.requests}) == 1
    assert store.feed_cursor("lab") is not None


def test_a_restart_resumes_after_what_was_taken(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Receiver()
    feed(store, r, monkeypatch).step()  # nothing yet
    first = receive(store, 2)
    feed(store, r, monkeypatch).step()
    deliver(store, first[0], "ehr", "dead")
    second = receive(store, 1)
    feed(store, r, monkeypatch).step()  # a new process: reads the recorded cursor
    deliver(store, first[0], "ehr", "sent")  # replayed after the dead letter: a new event
    feed(store, r, monkeypatch).step()
    got = [(e["type"], e["message_id"]) for e in r.events()]
    assert got == [  # in the order the changes happened
        ("message.received", first[0]),
        ("message.received", first[1]),
        ("delivery.dead", first[0]),
        ("message.received", second[0]),
        ("delivery.sent", first[0]),
    ]
    assert len({e["id"] for e in r.events()}) == 5


def test_batches_are_capped_and_recent_changes_wait_to_settle(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Receiver()
    f = feed(store, r, monkeypatch, batch_max=2)
    ids = receive(store, 5)
    while f.step():
        pass
    assert [len(body["events"]) for _, body in r.requests] == [2, 2, 1]
    assert [e["message_id"] for e in r.events()] == ids
    slow = feed(store, r, monkeypatch, settle_s=60)
    receive(store, 1)
    assert slow.step() is False and len(r.requests) == 3  # too recent: left for a later poll


def test_types_filter_and_a_bad_store_does_not_kill_the_thread(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Receiver()
    f = feed(store, r, monkeypatch, types=["delivery.dead"], interval_s=0.01)
    (a,) = receive(store, 1)
    deliver(store, a, "ehr", "dead")
    f.step()
    assert [e["type"] for e in r.events()] == ["delivery.dead"]
    calls = []

    def broken(channel: str) -> None:
        calls.append(channel)
        raise OSError("database is locked")

    monkeypatch.setattr(store, "feed_cursor", broken)
    f.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3 and f._thread is not None and f._thread.is_alive()
    f.stop()
