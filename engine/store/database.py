"""Connections to the message store: SQLite (WAL) by default, PostgreSQL by URL.

Statement parameters (message content) are never shown in database errors (``hide_parameters``).

A SQLite database holds raw messages (PHI): it is created mode 0600 in folders created 0700
(``engine.private``) before SQLite opens it, and SQLite gives its ``-wal`` and ``-shm`` files the mode of
the database file. A database file that already grants access to group or others is reported once with a
warning, not changed.

Two SQLAlchemy engines share one database:

- ``ingest``: commits raw inbound messages before they are acknowledged. Fully durable
  (SQLite ``synchronous=FULL``; PostgreSQL's default ``synchronous_commit=on``).
- ``work``: status changes made by workers. Everything it writes can be re-derived from what ``ingest``
  committed (the sweeper re-runs unfinished work and every step is idempotent), so it trades the last few
  commits on a power loss for speed (SQLite ``synchronous=NORMAL``; PostgreSQL ``synchronous_commit=off``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from engine.private import create_private_file, exposed_mode

log = logging.getLogger(__name__)


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    eng = create_engine(url, connect_args={"timeout": 30}, pool_size=16, max_overflow=16, hide_parameters=True)

    @event.listens_for(eng, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return eng


def _private_database_file(path: Path) -> None:
    create_private_file(path)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        mode = exposed_mode(p)
        if mode is not None:
            log.warning("store file %s is accessible to other users (mode %o): chmod 600 it", p, mode)


PING_IDLE_S = 1.0


def _ping_when_idle(eng: Engine) -> None:
    """Check a pooled PostgreSQL connection before use only when it sat idle for ``PING_IDLE_S``.

    ``pool_pre_ping`` pings at every checkout: a round trip per statement of the worker paths (~10 % of a
    worker's wall time, py-spy, bench/pg_pipeline.py). A connection used a moment ago is alive, or its
    statement fails as a disconnect, SQLAlchemy drops the whole pool and the step is retried like any
    database error (every step is idempotent). A failed ping makes the pool open a new connection.
    """

    @event.listens_for(eng, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(eng, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # new, or used a moment ago
        try:
            eng.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError() from exc


def make_engines(url: str, *, sqlite_synchronous: str = "FULL") -> tuple[Engine, Engine]:
    """Return the (ingest, work) engines for a database URL.

    ``sqlite_synchronous`` applies to SQLite's ingest engine: FULL (default) survives a power loss;
    NORMAL survives a crash of the process (or of the whole engine) but not of the machine.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            _private_database_file(Path(u.database))
        return _sqlite_engine(url, sqlite_synchronous), _sqlite_engine(url, "NORMAL")
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            url = u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        common = {"pool_size": 16, "max_overflow": 16, "hide_parameters": True}
        ingest = create_engine(url, connect_args={"connect_timeout": 5}, **common)
        work = create_engine(url, connect_args={"connect_timeout": 5, "options": "-c synchronous_commit=off"}, **common)
        for eng in (ingest, work):
            _ping_when_idle(eng)
        return ingest, work
    raise ValueError(f"unsupported database URL scheme: {u.drivername}")
