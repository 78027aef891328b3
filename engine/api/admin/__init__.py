"""The admin API (``/api/v1/…``): one module per concern, each ``routes(admin) -> list[BaseRoute]``.

:class:`Admin` is what every module gets: the store, the access rules and audit trail (``access``), the
settings, and ``control``: the running engine (:class:`EngineControl`: channel states, start / stop / pause /
resume, reload, and the queue, so actions take effect at once). :func:`routes` concatenates the routes of
every module in :data:`MODULES`; a new module adds itself there with a one-line edit.

Every route starts with ``who = await admin.access.require(request, Role.…)`` (401 before the body is read,
403 for a role too low), answers JSON (:func:`json`), raises ``Problem`` for errors, records every content
read and action (``await admin.access.record(who, …)``), and is described in the served OpenAPI document by
its module's ``OPENAPI`` paths (built with ``engine.api.admin.spec.operation``; ``engine/api/openapi.py``
merges them).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from engine.api.admin.access import Access, Principal, Role
from engine.api.problems import Problem
from engine.config.channel import Channel
from engine.reload import Reloaded
from engine.settings import Settings
from engine.sources.http_body import read_body
from engine.store import Store

__all__ = ["MODULES", "PREFIX", "Access", "Admin", "ChannelState", "EngineControl", "Principal", "Role", "json",
           "read_json", "routes"]  # fmt: skip

PREFIX = "/api/v1"

State = Literal["running", "paused", "stopped"]


@dataclass(frozen=True)
class ChannelState:
    """A configured channel as the engine runs it now."""

    name: str
    source: str  # the source type: mllp, webhook, dicom
    state: State


class EngineControl(Protocol):
    """What the admin API may do to the running engine (``engine.runtime.Engine`` implements it).

    Start/stop/pause/resume are the engine's state until it restarts (a restart starts the enabled channels):
    ``stop`` closes the channel's listener (its HTTP route answers 404); ``pause`` keeps it listening but
    refuses every new message with its protocol's "try later" reply (HL7 NAK ``AE``, HTTP 503 with
    ``Retry-After``, DICOM 0xA700) and commits nothing; queued work continues in both.
    """

    @property
    def channels(self) -> Sequence[Channel]:
        """The channel configurations in force (after the last reload)."""

    def channel_states(self) -> list[ChannelState]:
        """Every configured channel with its source type and state."""

    async def start_channel(self, name: str) -> None:
        """Start a stopped channel (``ListenError``/``ConfigError`` when it cannot); a paused one resumes."""

    async def stop_channel(self, name: str) -> None:
        """Close a channel's listener; messages already accepted are still processed and delivered."""

    async def pause_channel(self, name: str) -> None:
        """Refuse new messages with "try later" while listening (see the class docstring)."""

    async def resume_channel(self, name: str) -> None:
        """Take messages again after a pause."""

    async def reload(self) -> Reloaded:
        """Re-read the channel and mapping files and apply them; what changed (channel names, mapping file
        names). An invalid file raises ``ConfigError`` (naming ``file:line``) and the running configuration
        and maps stay."""

    def enqueue_process(self, message_ids: list[str]) -> None:
        """Queue messages for processing now (not via the sweeper)."""

    def enqueue_deliver(self, message_id: str, destination: str) -> None:
        """Queue one delivery now."""


@dataclass
class Admin:
    """What every admin module works with."""

    store: Store
    access: Access
    settings: Settings
    control: EngineControl
    #: set when the engine begins to stop: long-lived answers (the live event stream) end at once instead of
    #: holding the server's shutdown for its whole grace period (measured: 5.4 s with one dashboard open)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


async def read_json(request: Request, *, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """The request's JSON object body (call after ``require``): 413 over ``max_bytes``, 408 when slow, 400
    when it is not a JSON object (an empty body is ``{}``)."""
    raw = await read_body(request, max_bytes=max_bytes, timeout_s=10.0)
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(400, "invalid-json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "invalid-json", "the body must be a JSON object")
    return data


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (orjson)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


#: the admin modules whose routes are served, by name under ``engine.api.admin`` (each has
#: ``routes(admin) -> list[BaseRoute]``); names, not modules: the modules import this package
MODULES: tuple[str, ...] = (
    "tokens",
    "users",
    "channels",
    "queues",
    "audit",
    "messages",
    "events",
    "deadletters",
    "reprocess",
    "diff",
    "alerts",
)


def routes(admin: Admin) -> list[BaseRoute]:
    """Every admin module's routes."""
    out: list[BaseRoute] = []
    for name in MODULES:
        out.extend(importlib.import_module(f"engine.api.admin.{name}").routes(admin))
    return out
