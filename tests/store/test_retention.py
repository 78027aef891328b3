"""Retention: the pruner on SQLite and PostgreSQL, its batches, its configuration and ``interlink prune``."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sqlalchemy import event, func, insert, select
from typer.testing import CliRunner

from engine.cli import app
from engine.config.channel import load_channel
from engine.errors import ConfigError
from engine.settings import Settings
from engine.store import AttemptRecord, ContentKind, DeliveryStatus, MessageStatus, NewMessage, Store
from engine.store.repository import ProcessResult
from engine.store.retention import DAY_S, Pruner, RetentionOverride, RetentionSettings
from engine.store.schema import attempts, contents, deliveries, message_keys, messages, writes
from tests.integration.messages import oru

ALL_STATUSES = ("sent", "filtered", "error", "duplicate", "received", "transformed", "held", "dead")
KEPT = {"received", "transformed", "held", "dead"}  # unfinished or dead-lettered: never pruned


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def channels(**retention: dict) -> list:
    """Stand-ins for channels: a name and its retention override (all the pruner reads)."""
    return [SimpleNamespace(name=n, retention=RetentionOverride(**r) if r else None) for n, r in retention.items()]


def make(store: Store, status: str, channel: str = "lab", n: int = 1) -> list[str]:
    """``n`` messages brought to ``status`` through the store's own verbs, each with raw content; those that
    were delivered have a delivery, an attempt with its request and response, and a search key."""
    new = [
        NewMessage(channel, oru(f"{status}-{i}-{time.monotonic_ns()}", obx=8), status=MessageStatus.held)
        if status == "held"
        else NewMessage(channel, oru(f"{status}-{i}-{time.monotonic_ns()}", obx=8))
        for i in range(n)
    ]
    ids = [a.id for a in store.insert_messages(new)]
    if status in ("held", "received"):
        return ids
    if status in ("error", "filtered"):
        store.finish_processing([ProcessResult(i, MessageStatus(status), error="mapping refused it") for i in ids])
        return ids
    if status == "duplicate":
        with store.work.begin() as conn:
            conn.execute(messages.update().where(messages.c.id.in_(ids)).values(status="duplicate"))
        return ids
    store.finish_processing(
        [ProcessResult(i, MessageStatus.transformed, bundle=b'{"entry":[]}' * 20, destinations=("ehr",)) for i in ids]
    )
    with store.work.begin() as conn:
        conn.execute(insert(message_keys), [{"message_id": i, "kind": "mrn", "value": "0" * 24} for i in ids])
    if status == "transformed":
        return ids
    record = AttemptRecord(1, time.time(), 1.0, "sent", 200, None, b"request" * 20, b"response" * 20)
    for i in ids:
        if status == "dead":
            store.mark_dead(i, "ehr", "permanent failure")
        else:
            store.record_attempt(i, "ehr", record, status=DeliveryStatus.sent, next_attempt_at=0)
    return ids


def rows(store: Store, table, message_ids: list[str]) -> int:
    with store.work.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(table).where(table.c.message_id.in_(message_ids))
        ).scalar_one()


def alive(store: Store, ids: list[str]) -> int:
    with store.work.connect() as conn:
        return conn.execute(select(func.count()).select_from(messages).where(messages.c.id.in_(ids))).scalar_one()


def test_content_then_metadata_go_and_unfinished_or_dead_never(store: Store) -> None:
    made = {s: make(store, s) for s in ALL_STATUSES}
    pruner = Pruner(store, RetentionSettings(content_days=30, metadata_days=90, pause_ms=0), lambda: channels(lab={}))
    now = time.time()

    pruner.prune(now=now + 29 * DAY_S)
    assert all(rows(store, contents, ids) for ids in made.values())  # too young: nothing goes

    pruner.prune(now=now + 31 * DAY_S)
    for status, ids in made.items():
        assert alive(store, ids) == 1, status  # metadata stays
        assert bool(rows(store, contents, ids)) == (status in KEPT), status
    sent = made["sent"]
    assert rows(store, deliveries, sent) == 1 and rows(store, attempts, sent) == 1

    pruner.prune(now=now + 1000 * DAY_S)
    for status, ids in made.items():
        assert alive(store, ids) == (1 if status in KEPT else 0), status
        if status not in KEPT:
            assert not any(rows(store, t, ids) for t in (contents, deliveries, attempts, message_keys)), status
    # what is kept is whole
    assert store.content(made["dead"][0], ContentKind.raw) and store.content(made["received"][0], ContentKind.raw)
    assert store.load_for_delivery(made["transformed"][0], "ehr").bundle


def test_dry_run_counts_what_is_then_pruned(store: Store) -> None:
    for status in ALL_STATUSES:
        make(store, status, n=3)
    make(store, "sent", channel="adt", n=4)
    settings = RetentionSettings(content_days=10, metadata_days=20, pause_ms=0)
    pruner = Pruner(store, settings, lambda: channels(lab={"metadata_days": 40}, adt={}))
    now = time.time() + 30 * DAY_S  # adt: past its metadata; lab: past its content only
    dry = pruner.prune(dry_run=True, now=now)
    with store.work.connect() as conn:
        before = conn.execute(select(func.count()).select_from(contents)).scalar_one()
    assert (dry.channels["lab"].messages, dry.channels["lab"].contents) == (
        0,
        3 * 4 + 3 * 1 + 3 * 2 + 3 * 1,
    )  # sent, filtered, error, duplicate
    assert (dry.channels["adt"].messages, dry.channels["adt"].contents) == (4, 4 * 4)
    with store.work.connect() as conn:
        assert conn.execute(select(func.count()).select_from(contents)).scalar_one() == before  # dry: nothing gone
    real = pruner.prune(now=now)
    assert real.channels == dry.channels
    again = pruner.prune(dry_run=True, now=now)
    assert again.total().messages == again.total().contents == 0


def test_a_large_set_goes_in_several_short_transactions(store: Store) -> None:
    ids = make(store, "sent", n=45)
    settings = RetentionSettings(content_days=1, metadata_days=2, batch_size=10, pause_ms=0)
    pruner = Pruner(store, settings, lambda: channels(lab={}))
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(store.work, "commit", count)
    try:
        report = pruner.prune(now=time.time() + 3 * DAY_S)
    finally:
        event.remove(store.work, "commit", count)
    assert report.channels["lab"].messages == 45 and alive(store, ids) == 0
    assert report.batches == 5 and len(commits) >= 5  # 10 + 10 + 10 + 10 + 5, one transaction each


def test_without_secure_delete_the_pool_gets_its_connections_back_as_they_were(store: Store) -> None:
    ids = make(store, "sent", n=5)
    settings = RetentionSettings(content_days=1, metadata_days=2, batch_size=2, pause_ms=0, secure_delete=False)
    Pruner(store, settings, lambda: channels(lab={})).prune(now=time.time() + 3 * DAY_S)
    assert alive(store, ids) == 0
    if store.work.dialect.name == "sqlite":
        with store.work.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


def test_channel_override_default_and_unconfigured_channels(store: Store) -> None:
    lab, adt, gone = make(store, "sent", "lab"), make(store, "sent", "adt"), make(store, "sent", "old-channel")
    settings = RetentionSettings(content_days=5, pause_ms=0)  # metadata kept for ever by default
    pruner = Pruner(store, settings, lambda: channels(lab={"content_days": 50, "metadata_days": 60}, adt={}))
    pruner.prune(now=time.time() + 10 * DAY_S)
    assert rows(store, contents, lab) and not rows(store, contents, adt) and not rows(store, contents, gone)
    pruner.prune(now=time.time() + 100 * DAY_S)
    assert alive(store, lab) == 0 and alive(store, adt) == 1 and alive(store, gone) == 1


def test_a_dead_letter_replayed_and_sent_is_pruned_at_the_next_rescan(store: Store) -> None:
    [dead] = make(store, "dead")
    settings = RetentionSettings(content_days=1, pause_ms=0, rescan_s=7 * DAY_S)
    pruner = Pruner(store, settings, lambda: channels(lab={}))
    now = time.time() + 2 * DAY_S
    pruner.prune(now=now)
    assert rows(store, contents, [dead])
    store.replay_dead(message_id=dead)
    record = AttemptRecord(1, time.time(), 1.0, "sent", 200, None, None, None)
    store.record_attempt(dead, "ehr", record, status=DeliveryStatus.sent, next_attempt_at=0)
    pruner.prune(now=now + 8 * DAY_S)
    assert not rows(store, contents, [dead]) and alive(store, [dead]) == 1


def test_stale_write_records_go_only_when_every_channel_bounds_metadata(store: Store) -> None:
    old = time.time() - 100 * DAY_S
    with store.work.begin() as conn:
        conn.execute(
            insert(writes),
            [
                {"target": "t", "resource": f"r{i}", "source_time": 1.0, "message_id": "m", "updated_at": old}
                for i in range(7)
            ]
            + [{"target": "t", "resource": "new", "source_time": 1.0, "message_id": "m", "updated_at": time.time()}],
        )
    settings = RetentionSettings(metadata_days=30, batch_size=3, pause_ms=0)
    assert Pruner(store, settings, lambda: channels(lab={})).prune(dry_run=True).writes == 7
    keeps_for_ever = RetentionSettings(pause_ms=0)  # the default (unconfigured channels) keeps metadata
    assert Pruner(store, keeps_for_ever, lambda: channels(lab={"metadata_days": 30})).prune().writes == 0
    assert Pruner(store, settings, lambda: channels(lab={})).prune().writes == 7
    with store.work.connect() as conn:
        assert conn.execute(select(writes.c.resource)).scalars().all() == ["new"]


CHANNEL = """\
name: lab
source: {type: mllp, port: 2575}
destinations:
  - {name: out, type: file, path: out.ndjson}
retention:
  content_days: 30
  metadata_days: 10
"""


def test_channel_retention_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(CHANNEL)
    with pytest.raises(ConfigError, match=rf"{p}:5: retention: .*metadata_days must be at least content_days"):
        load_channel(p)
    p.write_text(CHANNEL.replace("metadata_days: 10", "metadata_dayz: 10"))
    with pytest.raises(ConfigError, match=rf"{p}:7: retention.metadata_dayz: .*unknown field"):
        load_channel(p)
    p.write_text(CHANNEL.replace("content_days: 30", "content_days: -1"))
    with pytest.raises(ConfigError, match=rf"{p}:6: retention.content_days: "):
        load_channel(p)
    p.write_text(CHANNEL.replace("metadata_days: 10", "metadata_days: 90"))
    assert load_channel(p).retention == RetentionOverride(content_days=30, metadata_days=90)


def test_engine_retention_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text("retention:\n  content_days: 7\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:3: retention.batch_size"):
        Settings.load(cfg)
    cfg.write_text("retention:\n  content_days: 7\n")
    assert Settings.load(cfg).retention.content_days == 7


def test_prune_command_dry_run_then_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("INTERLINK_CONFIG", "INTERLINK_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "lab.yaml").write_text(CHANNEL.replace("30", "0").replace("10", "0"))
    cfg = tmp_path / "engine.yaml"
    url = f"sqlite:///{tmp_path}/s.db"
    cfg.write_text(yaml.safe_dump({"database_url": url, "channels_dir": str(tmp_path / "channels")}))
    store = Store(url)
    ids = make(store, "sent", n=3) + make(store, "dead")
    store.close()

    def prune(*args: str) -> str:
        result = CliRunner().invoke(app, ["prune", "--config", str(cfg), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    out = prune("--dry-run")
    assert "lab" in out and "would remove 3 message(s), 12 content row(s)" in out
    assert "removed 3 message(s)" in prune("--channel", "lab")
    assert "would remove 0 message(s)" in prune("--dry-run")
    store = Store(url)
    try:
        assert alive(store, ids) == 1  # the dead letter
    finally:
        store.close()


def test_interlink_run_prunes_on_its_schedule(tmp_path: Path) -> None:
    """The pruner thread of a running engine: old finished messages go, recent ones lose their content, the
    dead letter stays whole."""
    from tests.api.running import RunningEngine, webhook_channel
    from tests.integration.harness import wait_until

    channel = {**webhook_channel("events", out=tmp_path / "out"), "retention": {"content_days": 0, "metadata_days": 1}}
    with RunningEngine(tmp_path, [channel], workers=False, retention={"interval_s": 0.2}) as running:
        store = running.engine.store
        old, recent, dead = (
            make(store, "sent", "events", 3),
            make(store, "sent", "events", 2),
            make(store, "dead", "events"),
        )
        with store.work.begin() as conn:
            conn.execute(
                messages.update().where(messages.c.id.in_(old + dead)).values(received_at=time.time() - 2 * DAY_S)
            )
        wait_until(lambda: alive(store, old) == 0 and rows(store, contents, recent) == 0, 10, "the pruner's passes")
        assert alive(store, recent) == 2 and alive(store, dead) == 1 and rows(store, contents, dead) == 2
