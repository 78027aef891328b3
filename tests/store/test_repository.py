"""The store's verbs against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from engine.errors import StoreUnavailable
from engine.store import AttemptRecord, ContentKind, DeliveryStatus, MessageStatus, NewMessage, Store


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def msg(
    control_id: str = "C1", channel: str = "lab", sender: str = "LIS|LAB", window: float | None = 3600
) -> NewMessage:
    return NewMessage(
        channel=channel,
        raw=b"MSH|^~\\&|x",
        sender=sender,
        control_id=control_id,
        dedupe=f"{sender}\x1f{control_id}",
        dedupe_window_s=window,
    )


def attempt(n: int, outcome: str = "sent", code: int | None = 200) -> AttemptRecord:
    return AttemptRecord(n, time.time(), 1.0, outcome, code, None, None, b"{}")


def test_insert_keeps_raw_and_status(store: Store) -> None:
    [acc] = store.insert_messages([msg()])
    assert acc.status == MessageStatus.received
    row = store.message(acc.id)
    assert row.status == "received" and row.channel == "lab" and row.control_id == "C1"
    assert store.content(acc.id, ContentKind.raw) == b"MSH|^~\\&|x"


def test_duplicates_within_window_and_batch(store: Store) -> None:
    [first] = store.insert_messages([msg("A")])
    res = store.insert_messages([msg("A"), msg("B"), msg("B"), msg("A", sender="OTHER|X"), msg("A", channel="adt")])
    assert [r.duplicate_of for r in res] == [first.id, None, res[1].id, None, None]
    assert res[0].status == MessageStatus.duplicate
    # a message that ended in error does not make its resend a duplicate
    [bad] = store.insert_messages(
        [
            NewMessage(
                "lab",
                b"x",
                sender="S|F",
                control_id="E",
                dedupe="S|F\x1fE",
                status=MessageStatus.error,
                dedupe_window_s=60,
            )
        ]
    )
    [again] = store.insert_messages([msg("E", sender="S|F")])
    assert bad.status == MessageStatus.error and again.duplicate_of is None


def test_dedupe_window_expires(store: Store) -> None:
    store.insert_messages([msg("W", window=0.2)])
    time.sleep(0.3)
    [again] = store.insert_messages([msg("W", window=0.2)])
    assert again.duplicate_of is None


def test_transform_once_then_deliver_and_settle(store: Store) -> None:
    [acc] = store.insert_messages([msg()])
    assert store.mark_transformed(acc.id, b'{"entry":[]}', ["ehr", "file"]) is True
    assert store.mark_transformed(acc.id, b"{}", ["ehr"]) is False  # a second worker loses the race
    assert store.content(acc.id, ContentKind.transformed) == b'{"entry":[]}'
    store.record_attempt(acc.id, "ehr", attempt(1), status=DeliveryStatus.sent, next_attempt_at=0)
    assert store.message(acc.id).status == "transformed"  # file still pending
    store.record_attempt(acc.id, "file", attempt(1), status=DeliveryStatus.sent, next_attempt_at=0)
    assert store.message(acc.id).status == "sent"
    assert [a.destination for a in store.attempts_of(acc.id)] == ["ehr", "file"]
    assert store.content(acc.id, ContentKind.response, "ehr") == b"{}"


def test_dead_letter_and_replay(store: Store) -> None:
    [acc] = store.insert_messages([msg()])
    store.mark_transformed(acc.id, b"{}", ["ehr"])
    store.record_attempt(
        acc.id, "ehr", attempt(1, "permanent", 400), status=DeliveryStatus.retrying, next_attempt_at=1e18
    )
    store.mark_dead(acc.id, "ehr", "permanent failure: HTTP 400")
    assert store.message(acc.id).status == "dead"
    [dead] = store.dead_letters()
    assert (dead.message_id, dead.destination, dead.last_status_code) == (acc.id, "ehr", 400)
    assert store.replay_dead(message_id=acc.id) == [(acc.id, "ehr")]
    assert store.delivery(acc.id, "ehr").status == "pending" and store.delivery(acc.id, "ehr").attempts == 0
    assert store.message(acc.id).status == "transformed"
    assert store.dead_letters() == []


def test_unfinished_respects_grace_and_schedule(store: Store) -> None:
    a, b = store.insert_messages([msg("1"), msg("2")])
    store.mark_transformed(b.id, b"{}", ["ehr"])
    received, due = store.unfinished(older_than=time.time() - 60)
    assert (received, due) == ([], [])
    received, due = store.unfinished(older_than=time.time() + 1)
    assert received == [a.id] and due == [(b.id, "ehr")]
    store.record_attempt(
        b.id, "ehr", attempt(1, "retry", 503), status=DeliveryStatus.retrying, next_attempt_at=time.time() + 3600
    )
    assert store.unfinished(older_than=time.time() + 1)[1] == []


def test_mark_error_keeps_raw(store: Store) -> None:
    [acc] = store.insert_messages([msg()])
    assert store.mark_error(acc.id, "PID-7: invalid date")
    row = store.message(acc.id)
    assert row.status == "error" and row.error == "PID-7: invalid date"
    assert store.content(acc.id, ContentKind.raw) is not None
    assert store.reprocess(acc.id) and store.message(acc.id).status == "received"


def test_unavailable_store_raises(tmp_path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    with s.ingest.begin() as c:
        c.exec_driver_sql("DROP TABLE contents")
    with pytest.raises(StoreUnavailable):
        s.insert_messages([msg()])
    s.close()


def test_sqlite_files_and_new_folders_are_private(tmp_path: Path) -> None:
    """The store holds raw PHI: database, -wal and -shm 0600 and the folders it makes 0700, under a
    common umask that would otherwise leave them readable by every user of the machine."""
    folder = tmp_path / "data" / "store"
    old = os.umask(0o022)
    try:
        s = Store(f"sqlite:///{folder}/interlink.db")
        s.insert_messages([msg()])
        files = [folder / "interlink.db", folder / "interlink.db-wal", folder / "interlink.db-shm"]
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        s.close()
    finally:
        os.umask(old)
    assert modes == {"interlink.db": "0o600", "interlink.db-wal": "0o600", "interlink.db-shm": "0o600"}
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == "0o700"
    assert oct(stat.S_IMODE(folder.parent.stat().st_mode)) == "0o700"


def test_existing_shared_database_is_reported_not_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "old.db"
    db.touch()
    db.chmod(0o644)
    s = Store(f"sqlite:///{db}")
    s.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o644
    assert [r.getMessage() for r in caplog.records if r.name == "engine.store.database"] == [
        f"store file {db} is accessible to other users (mode 644): chmod 600 it"
    ]
