"""Channel counters and queue depths on SQLite and PostgreSQL: equal to the store's rows; a recent count
shared when asked for (the live feed), a fresh one otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.store import MessageStatus, NewMessage, ProcessResult, Store
from engine.store.overview import channel_counters, queue_depths


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


def test_counters_and_depths(store: Store) -> None:
    statuses = [MessageStatus.sent] * 3 + [MessageStatus.error, MessageStatus.filtered, MessageStatus.duplicate]
    store.insert_messages([NewMessage(channel="lab", raw=b"x", status=s) for s in statuses])
    waiting = store.insert_messages([NewMessage(channel="adt", raw=b"x") for _ in range(3)])
    store.finish_processing([ProcessResult(waiting[0].id, MessageStatus.transformed, bundle=b"{}",
                                           destinations=("ehr", "copy"), channel="adt", targets=("", ""))])  # fmt: skip
    store.mark_dead(waiting[0].id, "copy", "refused (HTTP 400)")
    counts = channel_counters(store)
    assert counts["lab"] == {"received": 6, "queued": 0, "sent": 3, "filtered": 1, "errored": 1, "dead": 0,
                             "duplicate": 1}  # fmt: skip
    assert counts["adt"] == {"received": 3, "queued": 2, "sent": 0, "filtered": 0, "errored": 0, "dead": 1,
                             "duplicate": 0}  # fmt: skip
    depths = {(q.channel, q.destination): q for q in queue_depths(store)}
    assert set(depths) == {("adt", None), ("adt", "ehr")}  # the dead delivery waits for no one
    assert (depths["adt", None].depth, depths["adt", "ehr"].by_status) == (2, {"pending": 1})
    first = store.message(waiting[0].id)
    assert first is not None and depths["adt", "ehr"].oldest_received_at == first.received_at


def test_a_recent_count_is_shared_only_when_asked_for(store: Store) -> None:
    store.insert_messages([NewMessage(channel="lab", raw=b"x", status=MessageStatus.sent)])
    assert channel_counters(store, max_age_s=60)["lab"]["sent"] == 1
    store.insert_messages([NewMessage(channel="lab", raw=b"x", status=MessageStatus.sent)])
    assert channel_counters(store, max_age_s=60)["lab"]["sent"] == 1  # the count of a moment ago
    assert channel_counters(store)["lab"]["sent"] == 2  # afresh
    assert channel_counters(store, max_age_s=0.000001)["lab"]["sent"] == 2
