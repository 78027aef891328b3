"""``GET /api/v1/audit`` (admin): the audit trail, newest first, by cursor (``next_cursor`` of a page gives
the next, older one; rows written meanwhile never shift a page). Filters: ``action`` (exact, or a prefix
ending in ``.`` such as ``channel.``), ``token_id``, ``message_id``, ``since``/``until`` (epoch seconds).

There is no route that edits or deletes the trail (any other method answers 405).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem

__all__ = ["routes"]

MAX_LIMIT = 500


def _number(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise Problem(400, "invalid-parameter", f"{name}: a number (epoch seconds)") from None


def routes(admin: Admin) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        await admin.access.require(request, Role.admin)
        q = request.query_params
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise Problem(400, "invalid-parameter", f"limit: 1 to {MAX_LIMIT}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise Problem(400, "invalid-parameter", f"limit: 1 to {MAX_LIMIT}")
        args: dict[str, Any] = {
            "cursor": q.get("cursor") or None, "limit": limit, "action": q.get("action") or None,
            "token_id": q.get("token_id") or None, "message_id": q.get("message_id") or None,
            "since": _number(request, "since"), "until": _number(request, "until"),
        }  # fmt: skip
        try:
            page = await asyncio.to_thread(lambda: admin.access.trail.page(**args))
        except ValueError:
            raise Problem(400, "invalid-parameter", "cursor: as returned in next_cursor") from None
        entries = [{**asdict(e), "message_ids": list(e.message_ids)} for e in page.entries]
        return json({"entries": entries, "next_cursor": page.next_cursor})

    return [Route(f"{PREFIX}/audit", listing, methods=["GET"])]


OPENAPI: dict[str, Any] = {
    f"{PREFIX}/audit": {
        "get": operation("The audit trail, newest first, by cursor (no route edits or deletes it)", "admin",
                         "listAudit", {"type": "object", "required": ["entries", "next_cursor"], "properties": {
                             "entries": {"type": "array", "items": {"type": "object", "required": [
                                 "id", "at", "token_id", "actor", "role", "action", "target", "message_ids",
                                 "peer", "outcome"], "properties": {
                                 "id": {"type": "integer"}, "at": {"type": "number"},
                                 "token_id": {"type": "string"}, "actor": {"type": "string"},
                                 "role": {"type": "string"}, "action": {"type": "string"},
                                 "target": {"type": "string"},
                                 "message_ids": {"type": "array", "items": {"type": "string"}},
                                 "peer": {"type": "string"}, "outcome": {"type": "string"}}}},
                             "next_cursor": {"type": ["string", "null"]}}},
                         parameters=[param("cursor", description="next_cursor of the previous page"),
                                     param("limit", type="integer", minimum=1, maximum=MAX_LIMIT),
                                     param("action", description="exact, or a prefix ending in '.'"),
                                     param("token_id"), param("message_id"),
                                     param("since", type="number"), param("until", type="number")],
                         errors=(400,)),
    },
}  # fmt: skip
