"""``/api/v1/alerts``: the alerts of every channel (engine/alerts/), and acknowledging one.

``GET /api/v1/alerts`` (viewer) — newest first, ``{"items": [alert…], "next": cursor | null}``; filters
``state`` (``open``, ``acknowledged``, ``escalated``, ``resolved``, or ``active``: what needs attention —
open, escalated, and acknowledged rule alerts whose condition still holds; an acknowledged critical result
is done), ``channel``, ``kind`` (``silence``, ``error_rate``, ``dead_letters``, ``queue_age``,
``critical``), ``limit`` (1-500, default 100) and ``cursor`` (``next`` of the previous page: alerts raised
meanwhile never shift a page). An alert is ``{id, channel, kind, rule, state, raised_at, acked_at,
acked_by, escalated_at, resolved_at, message_id, detail}`` (times ISO 8601 UTC; ``detail``: figures, or
a critical result's observation fullUrl, interpretation code or rule name and codes): metadata only, never
message content.

``POST /api/v1/alerts/{id}/ack`` (operator) — open or escalated → ``acknowledged`` by the token's name: no
reminder and no escalation follow. Acknowledging an acknowledged alert changes nothing (200); a resolved one
is 409; an unknown id 404. Audited as ``alert.ack`` (target: the alert id; the message of a critical result).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.alerts.book import AlertBook
from engine.alerts.evaluator import alert_json
from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store.schema import AlertState

__all__ = ["routes"]

MAX_LIMIT = 500
STATES = ("active", *(s.value for s in AlertState))
KINDS = ("silence", "error_rate", "dead_letters", "queue_age", "critical")
_ID = re.compile(r"^[0-9a-f]{32}$")


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in allowed:
        raise Problem(400, "invalid-parameter", f"{name}: one of {', '.join(allowed)}")
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem(400, "invalid-parameter", f"limit: an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def routes(admin: Admin) -> list[BaseRoute]:
    book = AlertBook(admin.store)

    async def listing(request: Request) -> Response:
        await admin.access.require(request, Role.viewer)
        state, kind = _choice(request, "state", STATES), _choice(request, "kind", KINDS)
        limit = _limit(request)
        cursor = request.query_params.get("cursor") or None
        if cursor is not None and not _ID.match(cursor):
            raise Problem(400, "invalid-parameter", "cursor: as returned in next")
        channel = request.query_params.get("channel") or None
        rows = await asyncio.to_thread(
            book.listing, state=state, channel=channel, kind=kind, before=cursor, limit=limit
        )
        items = [alert_json(r) for r in rows]
        return json({"items": items, "next": items[-1]["id"] if len(items) == limit else None})

    async def acknowledge(request: Request) -> Response:
        who = await admin.access.require(request, Role.operator)
        alert_id = request.path_params["id"]
        if not _ID.match(alert_id):
            raise Problem(404, "not-found", "no such alert")
        row = await asyncio.to_thread(book.acknowledge, alert_id, who.name)
        if row is None:
            raise Problem(404, "not-found", "no such alert")
        ids = [row.message_id] if row.message_id else []
        if row.state == AlertState.resolved:
            await admin.access.record(who, "alert.ack", target=alert_id, message_ids=ids, outcome="refused")
            raise Problem(409, "alert-resolved", "the alert is resolved: nothing to acknowledge")
        await admin.access.record(who, "alert.ack", target=alert_id, message_ids=ids)
        return json(alert_json(row))

    return [
        Route(f"{PREFIX}/alerts", listing, methods=["GET"]),
        Route(f"{PREFIX}/alerts/{{id}}/ack", acknowledge, methods=["POST"]),
    ]


_ALERT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "channel", "kind", "rule", "state", "raised_at", "acked_at", "acked_by", "escalated_at",
                 "resolved_at", "message_id", "detail"],
    "properties": {
        "id": {"type": "string"}, "channel": {"type": "string"}, "kind": {"type": "string", "enum": list(KINDS)},
        "rule": {"type": "string"}, "state": {"type": "string", "enum": list(STATES[1:])},
        "raised_at": {"type": "string", "format": "date-time"},
        "acked_at": {"type": ["string", "null"], "format": "date-time"},
        "acked_by": {"type": ["string", "null"]},
        "escalated_at": {"type": ["string", "null"], "format": "date-time"},
        "resolved_at": {"type": ["string", "null"], "format": "date-time"},
        "message_id": {"type": ["string", "null"]},
        "detail": {"type": "object", "description": "Figures (counts, rates, ages) or a critical result's "
                   "observation fullUrl, interpretation code, rule and codes; never message content."},
    },
}  # fmt: skip

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/alerts": {
        "get": operation(
            "Alerts of every channel, newest first, by cursor",
            "viewer",
            "listAlerts",
            {"type": "object", "required": ["items", "next"],
             "properties": {"items": {"type": "array", "items": _ALERT}, "next": {"type": ["string", "null"]}}},
            parameters=[
                param("state", description="open, acknowledged, escalated, resolved, or active (open, escalated, and "
                      "acknowledged rule alerts not yet resolved)",
                      type="string", enum=list(STATES)),
                param("channel"),
                param("kind", type="string", enum=list(KINDS)),
                param("cursor", description="next of the previous page"),
                param("limit", type="integer", minimum=1, maximum=MAX_LIMIT),
            ],
            errors=(400,),
        ),
    },
    f"{PREFIX}/alerts/{{id}}/ack": {
        "post": operation(
            "Acknowledge an alert: no reminder or escalation follows (audited)",
            "operator",
            "ackAlert",
            _ALERT,
            parameters=[param("id", "path", "The alert's id")],
            errors=(404, 409),
        ),
    },
}  # fmt: skip
OPENAPI[f"{PREFIX}/alerts/{{id}}/ack"]["post"]["responses"]["409"]["description"] = "The alert is resolved."
