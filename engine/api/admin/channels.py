"""``/api/v1/channels``: the channel table (viewer) and channel control (admin).

- ``GET /api/v1/channels``: every configured channel with its source type, state (``running``, ``paused``,
  ``stopped``), destinations and counters (``engine.store.overview.channel_counters``: SQL counts of the
  store, so they equal what a query of the store says).
- ``POST /api/v1/channels/{name}/start|stop|pause|resume``: ``stop`` closes the listener (a webhook channel's
  route answers 404); ``pause`` keeps listening and refuses each new message with its protocol's "try later"
  (HL7 NAK AE, HTTP 503 with Retry-After, DICOM 0xA700), committing nothing; work already accepted goes on
  in both. The state lasts until the engine restarts (then ``enabled:`` in the file decides).
- ``POST /api/v1/channels/reload``: re-reads the channel files and the mapping files (``mappings_dir`` and
  its overlays). An invalid file, or a channel naming a map no longer there, is a 422 problem naming
  ``file:line`` and the running configuration and maps stay; otherwise changed maps are swapped in without
  losing or repeating a message and changed channels restart with their new configuration
  (``EngineControl.reload``). The answer names the changed channels and mapping files.

Each action is audited (``channel.start`` …, ``channel.reload``; target = the channel, or the changed ones;
and ``mapping.reload``, target = the changed mapping files' names, when there are some).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.config.channel import Channel
from engine.errors import ConfigError, ListenError
from engine.reload import PartlyApplied, Reloaded
from engine.store import Store
from engine.store.overview import COUNTERS, channel_counters

__all__ = ["ACTIONS", "routes", "rows", "table"]

ACTIONS = ("start", "stop", "pause", "resume")


def rows(admin: Admin, *, max_age_s: float = 1.0) -> list[dict[str, Any]]:
    """The channel table (blocking: the store is read); counters at most ``max_age_s`` old (a live feed's
    viewers share one count per second; ``GET /api/v1/channels`` counts afresh)."""
    states = [(s.name, s.source, str(s.state)) for s in admin.control.channel_states()]
    return table(admin.store, states, admin.control.channels, max_age_s=max_age_s)


def table(
    store: Store, states: Sequence[tuple[str, str, str]], channels: Sequence[Channel], *, max_age_s: float = 0.0
) -> list[dict[str, Any]]:
    """The rows of :func:`rows` for ``states`` (name, source type, state), from the store alone (also
    ``interlink status`` when no engine answers)."""
    counts = channel_counters(store, max_age_s=max_age_s)
    zero = {"received": 0, **{name: 0 for name in COUNTERS}}
    destinations = {c.name: [d.name for d in c.destinations] for c in channels}
    return [
        {"name": name, "source": source, "state": state, "destinations": destinations.get(name, []),
         "counters": counts.get(name, zero)}
        for name, source, state in states
    ]  # fmt: skip


def routes(admin: Admin) -> list[BaseRoute]:
    access, control = admin.access, admin.control

    async def listing(request: Request) -> Response:
        await access.require(request, Role.viewer)
        return json({"channels": await asyncio.to_thread(rows, admin, max_age_s=0.0)})

    async def act(request: Request) -> Response:
        who = await access.require(request, Role.admin)
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ACTIONS:
            raise Problem(404, "not-found", "actions: " + ", ".join(ACTIONS))
        if name not in {s.name for s in control.channel_states()}:
            raise Problem(404, "unknown-channel", "no channel of this name")
        try:
            await getattr(control, f"{action}_channel")(name)
        except (ListenError, ConfigError) as exc:
            await access.record(who, f"channel.{action}", target=name, outcome="failed")
            raise Problem(409, "channel-not-started", str(exc)) from None
        await access.record(who, f"channel.{action}", target=name)
        state = next(s for s in control.channel_states() if s.name == name)
        return json({"name": name, "state": state.state})

    async def reload(request: Request) -> Response:
        who = await access.require(request, Role.admin)
        try:
            reloaded = await control.reload()
        except ConfigError as exc:
            await access.record(who, "channel.reload", outcome="refused")
            raise Problem(422, "invalid-config", str(exc)) from None
        except ListenError as exc:  # the rest was applied (PartlyApplied says what)
            done = exc.reloaded if isinstance(exc, PartlyApplied) else Reloaded()
            for action, target, outcome in done.audit("failed"):
                await access.record(who, action, target=target, outcome=outcome)
            raise Problem(409, "channel-not-started", str(exc)) from None
        for action, target, outcome in reloaded.audit():
            await access.record(who, action, target=target, outcome=outcome)
        return json({"changed": reloaded.channels, "mappings": reloaded.mappings})

    return [
        Route(f"{PREFIX}/channels", listing, methods=["GET"]),
        Route(f"{PREFIX}/channels/reload", reload, methods=["POST"]),
        Route(f"{PREFIX}/channels/{{name}}/{{action}}", act, methods=["POST"]),
    ]


_COUNTERS = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": 0},
    "description": "Messages by outcome: received (all), queued (not finished), sent, filtered, "
    "errored, dead, duplicate.",
}
_STATE = {"enum": ["running", "paused", "stopped"]}

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/channels": {
        "get": operation("Channels with state and counters", "viewer", "listChannels", {
            "type": "object", "required": ["channels"], "properties": {"channels": {"type": "array", "items": {
                "type": "object", "required": ["name", "source", "state", "destinations", "counters"],
                "properties": {"name": {"type": "string"}, "source": {"type": "string"}, "state": _STATE,
                               "destinations": {"type": "array", "items": {"type": "string"}},
                               "counters": _COUNTERS}}}}}),
    },
    f"{PREFIX}/channels/reload": {
        "post": operation("Re-read the channel and mapping files; an invalid one is refused and the running "
                          "version stays", "admin", "reloadChannels", {
                              "type": "object", "required": ["changed", "mappings"], "properties": {
                                  "changed": {"type": "array", "items": {"type": "string"},
                                              "description": "Channels changed, added or removed."},
                                  "mappings": {"type": "array", "items": {"type": "string"},
                                               "description": "Mapping files changed, added or removed."}}},
                          errors=(409, 422)),
    },
    f"{PREFIX}/channels/{{name}}/{{action}}": {
        "post": operation("Start, stop, pause (refuse new messages: try later) or resume a channel", "admin",
                          "controlChannel", {"type": "object", "required": ["name", "state"], "properties": {
                              "name": {"type": "string"}, "state": _STATE}},
                          parameters=[param("name", "path"), param("action", "path", enum=list(ACTIONS))],
                          errors=(404, 409)),
    },
}  # fmt: skip
