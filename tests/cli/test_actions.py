"""``interlink dlq replay|discard``, ``reprocess``, ``redeliver`` and ``diff`` (engine/cli_actions.py) against a
real engine: through its admin API with ``INTERLINK_TOKEN`` (at once, audited under the token), on the store
with a Redis queue (enqueued at once), or marked for the in-process engine's sweeper; dry runs count what is
then acted on; ``diff`` prints paths, values only with ``--show-values``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.queue.actors import DELIVER_QUEUE
from engine.store import Store
from engine.store.schema import audit
from tests.api.admin.conftest import AdminAPI, admin_api_factory  # noqa: F401 (the fixture)
from tests.api.admin.test_diff import drop_birth_date, engine_with_an_event
from tests.api.admin.test_replay import SLOW_SWEEPER, _blocked_channel, _post, _status, _unblock
from tests.api.running import webhook_channel
from tests.integration.harness import free_port, wait_until


def _config(api: AdminAPI, tmp: Path, **override: object) -> Path:
    """A settings file naming the running engine's store, channels, maps and HTTP port."""
    s = api.running.settings
    settings = {"database_url": s.database_url, "channels_dir": str(s.channels_dir), "http_port": s.http_port,
                "mappings_dir": str(s.mappings_dir), "mapping_overlays": [str(p) for p in s.mapping_overlays],
                "sweeper": {"interval_s": 300, "grace_s": 300}, **override}  # fmt: skip
    path = tmp / "cli.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def cli(config: Path, *args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {"INTERLINK_TOKEN": token or "", "INTERLINK_CONFIG": ""}
    r = CliRunner().invoke(app, [*args, "--config", str(config)], env=env)
    return r.exit_code, r.stdout, r.stderr


def _audit(store: Store, action: str) -> list:
    with store.work.connect() as conn:
        return list(conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)))


def test_replay_through_the_api_with_a_token(admin_api_factory: Callable[..., AdminAPI], tmp_path: Path) -> None:  # noqa: F811
    channel, blocked = _blocked_channel(tmp_path)
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    ids = [_post(api, n) for n in range(3)]
    wait_until(lambda: all(_status(api, m) == "dead" for m in ids), 20, "three dead letters")
    config = _config(api, tmp_path)
    token = api.tokens["operator"]

    code, out, _ = cli(config, "dlq", "replay", "--channel", "events", "--dry-run", token=token)
    assert code == 0 and "3 dead delivery(ies) would be replayed" in out
    assert all(_status(api, m) == "dead" for m in ids)
    code, _, err = cli(config, "dlq", "replay", "--all", token=api.tokens["viewer"])
    assert code == 1 and err.startswith("403")  # the API decides, with the token's role
    _unblock(blocked)
    code, out, err = cli(config, "dlq", "replay", "--channel", "events", token=token)
    assert code == 0, err
    assert "3 delivery(ies) replayed: queued by the running engine" in out
    wait_until(lambda: all(_status(api, m) == "sent" for m in ids), 10, "replayed through the API, sent at once")
    [row] = _audit(api.store, "deadletter.replay")
    assert row.token_id == api.token_ids["operator"] and sorted(row.message_ids.split()) == sorted(ids)


def test_without_a_token_the_in_process_engine_is_left_to_its_sweeper(
    admin_api_factory: Callable[..., AdminAPI],  # noqa: F811
    tmp_path: Path,
) -> None:
    channel, _ = _blocked_channel(tmp_path)
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    mid = _post(api, 1)
    wait_until(lambda: _status(api, mid) == "dead", 20, "a dead letter")
    config = _config(api, tmp_path)
    code, out, _ = cli(config, "dlq", "replay", mid[:12])  # a unique prefix
    assert code == 0 and "1 delivery(ies) replayed: marked for the running engine, which takes them within 300 s" in out
    d = api.store.delivery(mid, "ndjson")
    assert (d.status, d.updated_at) == ("pending", 0.0)  # stale on purpose: the sweeper's next pass takes it
    [row] = _audit(api.store, "deadletter.replay")
    assert (row.token_id, row.peer, row.message_ids) == ("", "cli", mid)
    # a token, but no API where the settings say: a note, then the store directly
    code, out, err = cli(_config(api, tmp_path, http_port=free_port()), "dlq", "list", token=api.tokens["operator"])
    assert code == 0 and "0 dead letter(s)" in out
    code, out, err = cli(
        _config(api, tmp_path, http_port=free_port()), "reprocess", "--all", "--status", "received", token="x"
    )
    assert code == 1 and "--status" in err


def test_replay_on_a_redis_queue_is_enqueued_at_once(
    tmp_path: Path, redis_url: str, queue_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.queue.actors import Actors
    from engine.queue.broker import make_broker
    from engine.store import NewMessage

    store = Store(f"sqlite:///{tmp_path}/s.db")
    accepted = store.insert_messages([NewMessage("lab", b"MSH|x", enqueue=False) for _ in range(2)])
    for a in accepted:
        store.mark_transformed(a.id, b"{}", ["ehr"])
        store.mark_dead(a.id, "ehr", "permanent failure")
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"database_url": store.url, "queue_url": redis_url,
                                      "queue_namespace": queue_namespace}))  # fmt: skip
    code, out, _ = cli(config, "dlq", "replay", "--all")
    assert code == 0 and "2 delivery(ies) replayed: enqueued" in out
    broker = make_broker(redis_url, namespace=queue_namespace)
    try:
        assert Actors(broker, None).waiting(DELIVER_QUEUE) == 2  # type: ignore[arg-type]
    finally:
        broker.close()
    assert {store.delivery(a.id, "ehr").status for a in accepted} == {"pending"}
    store.close()


def test_redeliver_and_discard_and_reprocess_through_the_api(
    admin_api_factory: Callable[..., AdminAPI],  # noqa: F811
    tmp_path: Path,
) -> None:
    channel = webhook_channel(out=tmp_path / "out")
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    mid = _post(api, 1)
    wait_until(lambda: _status(api, mid) == "sent", 10, "sent")
    config = _config(api, tmp_path)
    token = api.tokens["operator"]
    code, out, _ = cli(config, "redeliver", mid, "--destination", "second", token=token)
    assert code == 1 and f"{mid}: refused: 422" in out and "ndjson" in out
    second = tmp_path / "out" / "second.ndjson"
    channel["destinations"].append({"name": "second", "type": "file", "path": str(second)})
    (tmp_path / "channels" / "events.yaml").write_text(yaml.safe_dump(channel))
    asyncio.run_coroutine_threadsafe(api.engine.reload(), api.running.loop).result(30)
    code, out, err = cli(config, "redeliver", mid[:10], "--destination", "second", token=token)
    assert code == 0, err
    wait_until(lambda: second.exists() and second.read_text().count("\n") == 1, 10, "redelivered at once")
    code, out, _ = cli(config, "reprocess", "--channel", "events", "--dry-run", token=token)
    assert code == 0 and "0 message(s) would be reprocessed" in out
    code, _, err = cli(config, "dlq", "discard", "--all", token=token)
    assert code == 1 and "--reason" in err


def test_diff_prints_paths_and_values_only_when_asked(
    admin_api_factory: Callable[..., AdminAPI],  # noqa: F811
    tmp_path: Path,
) -> None:
    api, overlay, mid = engine_with_an_event(admin_api_factory, tmp_path)
    config = _config(api, tmp_path)
    code, out, _ = cli(config, "diff", "--channel", "events")
    assert code == 0 and out.strip().endswith("0 of 1 message(s) would change")
    drop_birth_date(overlay)
    code, out, _ = cli(config, "diff", "--channel", "events", "--limit", "5")
    assert code == 0 and "1 of 1 message(s) would change" in out
    assert "Patient" in out and "birthDate" in out and "removed" in out
    assert "1984" not in out and not _audit(api.store, "message.diff")
    code, out, _ = cli(config, "diff", "--show-values")
    assert code == 0 and '"1984-07-19"' in out
    [row] = _audit(api.store, "message.diff")
    assert (row.token_id, row.message_ids) == ("", mid)


def test_redeliver_on_the_store_a_duplicate_as_its_original(tmp_path: Path) -> None:
    from engine.store import AttemptRecord, DeliveryStatus, NewMessage

    store = Store(f"sqlite:///{tmp_path}/s.db")
    dup_key = {"control_id": "C1", "dedupe": "S\x1fC1", "dedupe_window_s": 3600.0, "enqueue": False}
    [orig] = store.insert_messages([NewMessage("events", b"MSH|x", **dup_key)])
    store.mark_transformed(orig.id, b'{"entry": []}', ["ndjson"])
    sent = AttemptRecord(1, 0.0, 1.0, "sent", None, None, None, None)
    store.record_attempt(orig.id, "ndjson", sent, status=DeliveryStatus.sent, next_attempt_at=0)
    [dup] = store.insert_messages([NewMessage("events", b"MSH|x", **dup_key)])
    [err] = store.insert_messages([NewMessage("events", b"MSH|y", enqueue=False)])
    store.mark_error(err.id, "PID-3: required")
    channel = webhook_channel(out=tmp_path / "out")
    channel["destinations"].append({"name": "fhir", "type": "file", "path": str(tmp_path / "out" / "fhir.ndjson")})
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "events.yaml").write_text(yaml.safe_dump(channel))
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"database_url": store.url, "channels_dir": str(tmp_path / "channels")}))
    code, out, err_out = cli(config, "redeliver", dup.id, err.id, "--destination", "fhir")
    assert code == 1
    assert f"{dup.id}: → fhir as its original {orig.id}: marked for the running engine" in out
    assert f"{err.id}: refused: a message error has no bundle to deliver" in out
    assert "reload its channels" in err_out
    d = store.delivery(orig.id, "fhir")
    assert (d.status, d.updated_at) == ("pending", 0.0)
    [row] = _audit(store, "message.redeliver")
    assert (row.token_id, row.message_ids, row.target) == ("", f"{orig.id} {dup.id}", "fhir")
    store.close()
