"""Operator actions by selection (engine/store/operations.py) against SQLite and PostgreSQL: dry-run counts
equal what is then acted on, batches, filters, redeliver of sent and duplicate messages."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from pydantic import ValidationError

from engine.store import DeliveryStatus, MessageStatus, NewMessage, Store
from engine.store import operations as ops
from engine.store.operations import Refused, Selection


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def _dead(store: Store, n: int, *, channel: str = "lab", mtype: str = "ORU^R01", lane: str = "") -> list[str]:
    """``n`` messages transformed with one delivery each to ``ehr``, given up (dead)."""
    accepted = store.insert_messages(
        [NewMessage(channel, b"MSH|x", message_type=mtype, lane=lane, enqueue=False) for _ in range(n)]
    )
    for a in accepted:
        assert store.mark_transformed(a.id, b'{"entry": []}', ["ehr"])
        store.mark_dead(a.id, "ehr", "permanent failure after 1 attempt(s): 422")
    return [a.id for a in accepted]


def test_dry_run_count_equals_replayed_in_batches(store: Store) -> None:
    lab = _dead(store, 7)
    _dead(store, 3, channel="adt", mtype="ADT^A01")
    sel = Selection(channel="lab")
    assert ops.count_dead(store, sel) == 7
    batches = list(ops.replay_dead(store, sel, batch=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(m for b in batches for m, _ in b) == sorted(lab)
    assert ops.count_dead(store, sel) == 0 and ops.count_dead(store, Selection(all=True)) == 3
    for mid in lab:
        assert store.delivery(mid, "ehr").status == DeliveryStatus.pending
        assert store.message(mid).status == MessageStatus.transformed


def test_filters_by_type_destination_time_and_ids(store: Store) -> None:
    oru = _dead(store, 2)
    adt = _dead(store, 2, mtype="ADT^A01")
    assert ops.count_dead(store, Selection(message_type="ADT")) == 2
    assert ops.count_dead(store, Selection(message_type="ORU^R01")) == 2
    assert ops.count_dead(store, Selection(destination="ehr")) == 4
    assert ops.count_dead(store, Selection(destination="other")) == 0
    assert ops.count_dead(store, Selection(ids=[oru[0], adt[1]])) == 2
    assert ops.count_dead(store, Selection(ids=[oru[0]], message_type="ADT")) == 0
    assert ops.count_dead(store, Selection(since="1h")) == 4
    assert ops.count_dead(store, Selection(until=datetime.fromtimestamp(time.time() - 3600).astimezone())) == 0
    page = ops.dead_letters(store, Selection(all=True), limit=3)
    rest = ops.dead_letters(store, Selection(all=True), after=(page[-1].message_id, page[-1].destination))
    assert [r.message_id for r in page + rest] == sorted(oru + adt)


def test_selection_refuses_what_is_not_an_id_and_needs_something() -> None:
    with pytest.raises(ValidationError, match=r"ids\[0\]"):
        Selection(ids=["../etc"])
    with pytest.raises(ValidationError):
        Selection.model_validate({"channel": "lab", "colour": "red"})
    assert not Selection().chooses and Selection(all=True).chooses and Selection(channel="x").chooses


def test_discard_by_filter_releases_waiting_behind(store: Store) -> None:
    [first] = _dead(store, 1, lane="L1")
    [later] = store.insert_messages([NewMessage("lab", b"MSH|x", lane="L1", enqueue=False)])
    store.mark_transformed(later.id, b"{}", ["ehr"])
    assert store.hold(later.id, "ehr")
    assert ops.count_dead(store, Selection(channel="lab")) == 1
    [done] = list(ops.discard_dead(store, Selection(channel="lab"), "wrong patient class"))
    assert done == [(first, "ehr")]
    d = store.delivery(first, "ehr")
    assert d.status == DeliveryStatus.discarded and d.last_error == "discarded: wrong patient class"
    assert ops.wake_behind(store, done) == [(later.id, "ehr")]
    assert store.delivery(later.id, "ehr").status == DeliveryStatus.pending


def test_reprocess_count_then_act_default_statuses(store: Store) -> None:
    dead = _dead(store, 2)
    errs = store.insert_messages([NewMessage("lab", b"MSH|x", enqueue=False) for _ in range(3)])
    for a in errs:
        store.mark_error(a.id, "PID-3: required")
    [sent] = store.insert_messages([NewMessage("lab", b"MSH|x", enqueue=False)])
    store.mark_transformed(sent.id, b"{}", [])
    assert ops.count_reprocess(store, Selection(channel="lab")) == 5
    ids = [m for b in ops.reprocess(store, Selection(channel="lab"), batch=2) for m in b]
    assert sorted(ids) == sorted(dead + [a.id for a in errs])
    assert all(store.message(m).status == MessageStatus.received and not store.deliveries_of(m) for m in ids)
    with pytest.raises(ValueError, match="status"):
        ops.count_reprocess(store, Selection(status=MessageStatus.received))


def test_redeliver_sent_to_a_new_destination_and_a_duplicate_as_its_original(store: Store) -> None:
    [orig] = store.insert_messages(
        [NewMessage("lab", b"MSH|x", control_id="C1", dedupe="S\x1fC1", dedupe_window_s=3600, enqueue=False)]
    )
    store.mark_transformed(orig.id, b'{"entry": []}', ["ndjson"])
    from engine.store import AttemptRecord

    rec = AttemptRecord(1, time.time(), 1.0, "sent", None, None, None, None)
    store.record_attempt(orig.id, "ndjson", rec, status=DeliveryStatus.sent, next_attempt_at=0)
    assert store.message(orig.id).status == MessageStatus.sent
    [dup] = store.insert_messages(
        [NewMessage("lab", b"MSH|x", control_id="C1", dedupe="S\x1fC1", dedupe_window_s=3600, enqueue=False)]
    )
    assert dup.status == MessageStatus.duplicate
    got = ops.redeliver(store, dup.id, "ehr", target="t1")
    assert got == ops.Redelivered(orig.id, "ehr", "lab", duplicate=dup.id)
    d = store.delivery(orig.id, "ehr")
    assert (d.status, d.target, d.attempts) == (DeliveryStatus.pending, "t1", 0)
    assert store.message(orig.id).status == MessageStatus.transformed
    with pytest.raises(Refused) as refused:
        ops.redeliver(store, orig.id, "ehr", target="t1")
    assert refused.value.slug == "conflict"
    # the sent delivery to ndjson goes again too, attempts restarting
    assert ops.redeliver(store, orig.id, "ndjson", target="t0").message_id == orig.id
    assert store.delivery(orig.id, "ndjson").status == DeliveryStatus.pending
    with pytest.raises(Refused) as refused:
        ops.redeliver(store, "0" * 32, "ehr", target="t1")
    assert refused.value.slug == "not-found"
    [err] = store.insert_messages([NewMessage("lab", b"MSH|x", enqueue=False)])
    store.mark_error(err.id, "PID-3: required")
    with pytest.raises(Refused) as refused:
        ops.redeliver(store, err.id, "ehr", target="t1")
    assert refused.value.slug == "no-bundle"


def test_for_diff_reads_raw_and_newest_bundle(store: Store) -> None:
    [a, _] = store.insert_messages([NewMessage("lab", b"RAW-A", enqueue=False), NewMessage("adt", b"RAW-B")])
    store.mark_transformed(a.id, b'{"v": 1}', [])
    rows = ops.for_diff(store, Selection(all=True), limit=10)
    assert [(r.id, r.raw, r.bundle) for r in rows] == [(a.id, b"RAW-A", b'{"v": 1}')]  # b is still received
    assert ops.for_diff(store, Selection(channel="adt"), limit=10) == []
