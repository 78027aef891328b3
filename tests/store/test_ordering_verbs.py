"""The store's ordering and stale-write verbs, on SQLite and PostgreSQL."""

from __future__ import annotations

from engine.store import MessageStatus, NewMessage, ProcessResult, Store
from engine.store.repository import Written


def commit(store: Store, lane: str, n: int = 1) -> list[str]:
    return [a.id for a in store.insert_messages([NewMessage(channel="c", raw=b"x", lane=lane) for _ in range(n)])]


def transform(store: Store, ids: list[str], target: str = "t1") -> None:
    store.finish_processing(
        [
            ProcessResult(m, MessageStatus.transformed, bundle=b"{}", destinations=("d",), targets=(target,), lane="L")
            for m in ids
        ]
    )


def test_gate_hold_release_and_wake(store_url: str) -> None:
    store = Store(store_url)
    try:
        first, second, third = commit(store, "L", 3)
        [other] = commit(store, "M")
        # an unprocessed predecessor blocks, whatever the target
        assert store.blocked(second, "L", "t1", hold_dead=True)
        assert not store.blocked(first, "L", "t1", hold_dead=True)
        assert not store.blocked(other, "M", "t1", hold_dead=True)
        transform(store, [first, second, third])
        # a pending delivery to the same target blocks; to another target it does not
        assert store.blocked(second, "L", "t1", hold_dead=True)
        assert not store.blocked(second, "L", "t2", hold_dead=True)
        assert store.hold(second, "d") and store.hold(third, "d")
        assert store.delivery(second, "d").status == "waiting"
        # the lanes a batch must wake in: one query for all of them
        assert store.lanes_waiting(["L", "M", ""]) == {"L"}
        # the first one is delivered: only the next waiting one is released, once
        store.mark_dead(first, "d", "gave up")
        assert store.blocked(second, "L", "t1", hold_dead=True)
        assert not store.blocked(second, "L", "t1", hold_dead=False)
        assert store.wake_after("L", first, "t1") == [(second, "d")]
        assert store.wake_after("L", first, "t1") == [(third, "d")]  # second is pending now, not waiting
        assert not store.release(second, "d")
        assert store.held() == 0
        assert store.lanes_waiting(["L", "M"]) == set()
    finally:
        store.close()


def test_writes_keep_the_newest_source_time(store_url: str) -> None:
    store = Store(store_url)
    try:
        [mid] = commit(store, "")
        store.record_attempts([], [(mid, Written("t1", ("urn:uuid:a", "urn:uuid:b"), 200.0))])
        store.record_attempts([], [(mid, Written("t1", ("urn:uuid:a",), 100.0))])  # older: no change
        assert store.newer_writes("t1", ["urn:uuid:a", "urn:uuid:b", "urn:uuid:c"], 150.0) == {
            "urn:uuid:a",
            "urn:uuid:b",
        }
        assert store.newer_writes("t1", ["urn:uuid:a"], 200.0) == set()  # the same time is not newer
        assert store.newer_writes("t2", ["urn:uuid:a"], 0.0) == set()  # per target
        store.record_attempts([], [(mid, Written("t1", ("urn:uuid:a",), 300.0))])
        assert store.newer_writes("t1", ["urn:uuid:a", "urn:uuid:b"], 250.0) == {"urn:uuid:a"}
    finally:
        store.close()
