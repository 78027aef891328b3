"""``interlink alerts list|ack`` on a real SQLite store: metadata listing, acknowledgement by unique prefix
(audited as the local user), resolved and unknown alerts refused."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from engine.alerts.book import AlertBook, NewAlert, dedupe_key
from engine.cli import app
from engine.store import Store
from engine.store.schema import audit


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [*args, "--config", str(config)], env={"INTERLINK_CONFIG": ""})
    return r.exit_code, r.stdout, r.stderr


def test_list_and_ack(tmp_path: Path) -> None:
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/store.db"}))
    store = Store(f"sqlite:///{tmp_path}/store.db")
    book = AlertBook(store)
    critical = NewAlert("lab", "critical", "HH", dedupe_key("critical", "m", "u"), {"interpretation": "HH"}, "a" * 32)
    silence = NewAlert("adt", "silence", "silence", dedupe_key("rule", "adt", "silence"), {"silent_min": 31})
    [(crit_id, _), (quiet_id, _)] = book.raise_alerts([critical, silence])
    code, out, _ = cli(config, "alerts", "list")
    assert code == 0 and crit_id in out and quiet_id in out and f"message {'a' * 32}" in out
    assert cli(config, "alerts", "list", "--kind", "silence")[1].count("\n") == 1

    code, out, _ = cli(config, "alerts", "ack", crit_id[:20])
    assert code == 0 and "acknowledged by" in out
    assert book.get(crit_id).state == "acknowledged"
    with store.work.connect() as conn:
        [row] = conn.execute(select(audit).where(audit.c.action == "alert.ack"))
    assert (row.token_id, row.target, row.message_ids, row.peer) == ("", crit_id, "a" * 32, "cli")
    assert "acked by" in cli(config, "alerts", "list", "--state", "acknowledged")[1]

    assert book.resolve(quiet_id)
    code, _, err = cli(config, "alerts", "ack", quiet_id)
    assert code == 1 and "resolved" in err
    assert cli(config, "alerts", "ack", "0" * 32)[0] == 1
    assert cli(config, "alerts", "ack", "0662")[0] == 1  # too short to be a prefix
    assert cli(config, "alerts", "list", "--state", "closed")[0] == 1
    store.close()
