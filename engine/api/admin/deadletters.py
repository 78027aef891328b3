"""``/api/v1/deadletters``: list dead deliveries (viewer: metadata only, keyset cursor), replay or discard one
or a filtered set (operator), each with ``?dry_run=true`` counting exactly what would be taken.

Actions take effect at once: replayed deliveries go straight to the running engine's queue
(``EngineControl.enqueue_deliver``), batch by batch as the store commits them, and a discard releases at once
what waited behind the dead letter in its patient's lane. Every action is audited (``deadletter.replay``,
``deadletter.discard``) with the message ids, one row per batch.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json, read_json
from engine.api.admin.selecting import (
    DRY_RUN,
    DRY_RUN_ANSWER,
    act_in_batches,
    dry_run,
    query_selection,
    selection,
    selection_schema,
)
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store import operations as ops

__all__ = ["OPENAPI", "routes"]

MAX_LIMIT = 500


def encode_cursor(message_id: str, destination: str) -> str:
    return base64.urlsafe_b64encode(f"{message_id} {destination}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        mid, _, dest = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(" ")
    except ValueError:
        raise Problem(422, "invalid-cursor", "cursor: not a cursor this API gave") from None
    if len(mid) != 32 or not dest:
        raise Problem(422, "invalid-cursor", "cursor: not a cursor this API gave")
    return mid, dest


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem(422, "invalid-parameter", f"limit: an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def routes(admin: Admin) -> list[BaseRoute]:
    access, store, control = admin.access, admin.store, admin.control

    async def list_dead(request: Request) -> Response:
        await access.require(request, Role.viewer)
        sel = query_selection(request)
        limit = _limit(request)
        cursor = request.query_params.get("cursor")
        after = decode_cursor(cursor) if cursor else None

        def page() -> list[dict[str, Any]]:
            rows = ops.dead_letters(store, sel, after=after, limit=limit)
            return [
                {"message_id": r.message_id, "destination": r.destination, "channel": r.channel,
                 "message_type": r.message_type, "received_at": r.received_at, "dead_at": r.updated_at,
                 "attempts": r.attempts, "last_status_code": r.last_status_code, "last_error": r.last_error,
                 "holding": store.held_behind(r.message_id)}
                for r in rows
            ]  # fmt: skip

        items = await asyncio.to_thread(page)
        last = items[-1] if len(items) == limit else None
        return json({"items": items, "next": encode_cursor(last["message_id"], last["destination"]) if last else None})

    async def replay(request: Request) -> Response:
        who = await access.require(request, Role.operator)
        sel = selection(await read_json(request))
        if dry_run(request):
            return json({"dry_run": True, "count": await asyncio.to_thread(ops.count_dead, store, sel)})
        done = await act_in_batches(access, who, "deadletter.replay", sel, lambda: ops.replay_dead(store, sel),
                                    enqueue, _ids)  # fmt: skip
        return json({"replayed": len(done), "deliveries": _pairs(done)})

    async def discard(request: Request) -> Response:
        who = await access.require(request, Role.operator)
        body = await read_json(request)
        sel = selection(body, extra=("reason",))
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise Problem(422, "reason-required", "reason: why (1 to 200 characters; no patient data)")
        if dry_run(request):
            return json({"dry_run": True, "count": await asyncio.to_thread(ops.count_dead, store, sel)})
        done = await act_in_batches(access, who, "deadletter.discard", sel,
                                    lambda: ops.discard_dead(store, sel, reason.strip()),
                                    lambda batch: enqueue(ops.wake_behind(store, batch)), _ids)  # fmt: skip
        return json({"discarded": len(done), "deliveries": _pairs(done)})

    def enqueue(pairs: list[tuple[str, str]]) -> None:
        for m, d in pairs:
            control.enqueue_deliver(m, d)

    return [
        Route(f"{PREFIX}/deadletters", list_dead, methods=["GET"]),
        Route(f"{PREFIX}/deadletters/replay", replay, methods=["POST"]),
        Route(f"{PREFIX}/deadletters/discard", discard, methods=["POST"]),
    ]


#: at most this many (message id, destination) pairs are listed in an action's answer (the count is exact)
_LISTED = 1000


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [m for m, _ in pairs]


def _pairs(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"message_id": m, "destination": d} for m, d in pairs[:_LISTED]]


_PAIRS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["message_id", "destination"],
        "properties": {"message_id": {"type": "string"}, "destination": {"type": "string"}},
    },
}
_NULLABLE_INT = {"type": ["integer", "null"]}
_DEAD = {
    "type": "object",
    "required": [
        "message_id",
        "destination",
        "channel",
        "message_type",
        "received_at",
        "dead_at",
        "attempts",
        "last_status_code",
        "last_error",
        "holding",
    ],
    "properties": {
        "message_id": {"type": "string"},
        "destination": {"type": "string"},
        "channel": {"type": "string"},
        "message_type": {"type": "string"},
        "received_at": {"type": "number"},
        "dead_at": {"type": "number"},
        "attempts": {"type": "integer"},
        "last_status_code": _NULLABLE_INT,
        "last_error": {"type": ["string", "null"], "description": "The engine's PHI-free reason."},
        "holding": {"type": "integer", "description": "Later messages of the patient waiting behind it (ordering)."},
    },
}
_FILTER = [
    param(n, description=d)
    for n, d in (
        ("channel", "Only this channel."),
        ("destination", "Only this destination."),
        ("status", "Only messages in this status."),
        ("message_type", "Only this message type (ORU^R01; ORU: all ORU)."),
        ("since", "Received at or after: ISO 8601, or an age (30m, 2h, 7d)."),
        ("until", "Received before."),
    )
]

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/deadletters": {"get": operation(
        "Dead deliveries in arrival order: metadata, keyset pages", "viewer", "listDeadLetters",
        {"type": "object", "required": ["items", "next"], "properties": {
            "items": {"type": "array", "items": _DEAD}, "next": {"type": ["string", "null"]}}},
        parameters=[*_FILTER, param("cursor", description="`next` of the previous page."),
                    param("limit", description=f"Rows per page (1-{MAX_LIMIT}, default 100).", type="integer")],
        errors=(422,))},
    f"{PREFIX}/deadletters/replay": {"post": operation(
        "Replay dead deliveries (one id or a filter) at once; dry_run counts", "operator", "replayDeadLetters",
        {"oneOf": [DRY_RUN_ANSWER, {"type": "object", "required": ["replayed", "deliveries"], "properties": {
            "replayed": {"type": "integer"}, "deliveries": _PAIRS}}]},
        parameters=[DRY_RUN], body=selection_schema(), errors=(400, 408, 413, 422))},
    f"{PREFIX}/deadletters/discard": {"post": operation(
        "Give up on dead deliveries with a reason; what waited behind them goes at once", "operator",
        "discardDeadLetters",
        {"oneOf": [DRY_RUN_ANSWER, {"type": "object", "required": ["discarded", "deliveries"], "properties": {
            "discarded": {"type": "integer"}, "deliveries": _PAIRS}}]},
        parameters=[DRY_RUN], errors=(400, 408, 413, 422),
        body=selection_schema(reason=({"type": "string", "minLength": 1, "maxLength": 200,
                                       "description": "Why (kept with the delivery; no patient data)."},)))},
}  # fmt: skip
