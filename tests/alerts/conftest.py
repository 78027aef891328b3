"""Fixtures of the alert tests: a real SQLite store and a real HTTP receiver with the signing secret set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store import Store
from tests.alerts.receiver import SECRET, SECRET_ENV, Receiver


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/alerts.db")
    yield s
    s.close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Receiver() as r:
        yield r
