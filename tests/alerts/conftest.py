"""Fixtures of the alert tests: a real store (SQLite, and the session's PostgreSQL database) and a real HTTP
receiver with the signing secret set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import delete

from engine.store import Store
from engine.store.schema import alerts
from tests.alerts.receiver import SECRET, SECRET_ENV, Receiver


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    if s.work.dialect.name == "postgresql":  # the session's database: earlier tests' alerts go
        with s.work.begin() as conn:
            conn.execute(delete(alerts))
    yield s
    s.close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Receiver() as r:
        yield r
