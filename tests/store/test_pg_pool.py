"""PostgreSQL connections: a pooled connection is checked before use only after it sat idle
(``engine.store.database.PING_IDLE_S``), and one the server dropped meanwhile is replaced, not used."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from engine.store import Store, database


def backend_pids(store: Store) -> set[int]:
    with store.work.connect() as c:
        return {int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())}


def test_an_idle_connection_the_server_dropped_is_replaced(pg_fresh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "PING_IDLE_S", 0.2)
    store = Store(pg_fresh)
    admin = create_engine(pg_fresh)
    try:
        [pid] = backend_pids(store)
        # used a moment ago: no ping (the same connection, no extra round trip)
        assert backend_pids(store) == {pid}
        with admin.begin() as c:
            c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.3)
        # idle longer than PING_IDLE_S: pinged, found dead, replaced before the statement runs
        assert store.backlog() == 0
        assert backend_pids(store) != {pid}
    finally:
        admin.dispose()
        store.close()


def test_reads_on_the_hot_paths_begin_no_transaction(pg_fresh: str) -> None:
    store = Store(pg_fresh)
    try:
        with store.reads.connect() as c:
            c.exec_driver_sql("SELECT 1").all()
            # autocommit: no transaction left open by the read (no BEGIN, no ROLLBACK round trip)
            assert c.connection.dbapi_connection.info.transaction_status == 0  # type: ignore[union-attr]
        assert store.lanes_waiting(["L"]) == set()
    finally:
        store.close()
