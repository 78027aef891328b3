"""Fixtures for admin API tests: a real engine (in this process, its own event loop in a thread) with its HTTP
server on a free loopback port, its own SQLite store in a tmp dir, and one token per role.

- ``admin_api`` (function scope): an :class:`AdminAPI` over the default channels: ``events``, a webhook
  channel taking FHIR and JSON without authentication, delivering to an NDJSON file. No HL7 maps are compiled
  and mapping runs in-thread (``mapping_processes: 0``): it starts in well under a second.
- ``admin_api_factory``: ``admin_api_factory(channels=[...], **settings)`` for other channels or settings
  (``tests/api/running.py``: ``webhook_channel(name, out=...)``, ``RunningEngine``); ``hl7_maps=True``
  compiles the project's maps (seconds).

``api.client("viewer")`` is an httpx client with that role's bearer token; ``api.client(None)`` has none.
``api.store`` is the engine's store, ``api.engine`` the Engine, ``api.tokens[role]`` the secrets,
``api.token_ids[role]`` their ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.runtime import Engine
from engine.store import Store
from engine.store.access import ROLES, Tokens
from tests.api.running import RunningEngine, webhook_channel


@dataclass
class AdminAPI:
    running: RunningEngine
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.Client] = field(default_factory=list)
    _by_role: dict[str | None, httpx.Client] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def engine(self) -> Engine:
        return self.running.engine

    @property
    def store(self) -> Store:
        return self.running.engine.store

    def client(self, role: str | None = "admin", **kw: Any) -> httpx.Client:
        """An httpx client on the server, with ``role``'s bearer token (None: no Authorization header); without
        other arguments, one per role for the whole test (making a client costs ~0.1 s)."""
        shared = not kw
        if shared and role in self._by_role:
            return self._by_role[role]
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        headers.update(kw.pop("headers", {}))
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)
        self._clients.append(c)
        if shared:
            self._by_role[role] = c
        return c

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def admin_api_factory(tmp_path: Path) -> Iterator[Callable[..., AdminAPI]]:
    with ExitStack() as stack:

        def make(channels: list[dict] | None = None, **settings: Any) -> AdminAPI:
            if channels is None:
                channels = [webhook_channel(out=tmp_path / "out")]
            running = stack.enter_context(RunningEngine(tmp_path, channels, **settings))
            api = AdminAPI(running, tmp_path)
            stack.callback(api.close)
            tokens = Tokens(api.store)
            for role in ROLES:
                token, secret = tokens.create(role, f"test-{role}")
                api.tokens[role], api.token_ids[role] = secret, token.id
            return api

        yield make


@pytest.fixture
def admin_api(admin_api_factory: Callable[..., AdminAPI]) -> AdminAPI:
    return admin_api_factory()
