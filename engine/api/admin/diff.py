"""``POST /api/v1/diff`` (operator): what the mappings on disk now would change in the FHIR of stored messages.

The body is a selection (``operations.Selection``) and ``limit`` (newest first, default 20, at most
``MAX_LIMIT``). The mappings and channel files on disk are compiled for the diff (seconds; in a thread; kept
until a file changes: ``diff.Replays``), never the running engine's: nothing it runs changes. The answer
holds, per message, each resource that differs with its paths and the old and new values (message content:
audited as ``message.diff`` with the ids) and a summary per resource type, path and change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json, read_json
from engine.api.admin.selecting import selection, selection_schema
from engine.api.admin.spec import operation
from engine.api.problems import Problem
from engine.errors import ConfigError
from engine.store import operations as ops
from engine.transform.diff import Replays, summarize

__all__ = ["OPENAPI", "routes"]

MAX_LIMIT = 500


def routes(admin: Admin) -> list[BaseRoute]:
    access, store = admin.access, admin.store
    replays = Replays(admin.settings)

    async def diff(request: Request) -> Response:
        who = await access.require(request, Role.operator)
        body = await read_json(request)
        sel = selection(body, extra=("limit",))
        limit = body.get("limit", 20)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise Problem(422, "invalid-limit", f"limit: an integer from 1 to {MAX_LIMIT}")

        def run() -> dict[str, Any]:
            stored = ops.for_diff(store, sel, limit=limit)
            diffs = replays.current().diff(stored)
            return {
                "messages": [d.as_json() for d in diffs],
                "changed": sum(d.changed for d in diffs),
                "summary": [{"resource_type": t, "path": p, "op": op, "count": n}
                            for (t, p, op), n in sorted(summarize(diffs).items())],
            }  # fmt: skip

        try:
            out = await asyncio.to_thread(run)
        except ConfigError as exc:  # a mapping or channel file on disk does not compile: say where
            raise Problem(422, "mapping-invalid", str(exc)[:500]) from None
        ids = [m["message_id"] for m in out["messages"]]
        await access.record(who, "message.diff", target=sel.describe(), message_ids=ids)
        return json(out)

    return [Route(f"{PREFIX}/diff", diff, methods=["POST"])]


_CHANGE = {
    "type": "object",
    "required": ["path", "op"],
    "properties": {
        "path": {"type": "string", "description": "FHIRPath-like, in the entry (`name[0].given[1]`, `request.url`)."},
        "op": {"enum": ["added", "removed", "changed"]},
        "old": {},
        "new": {},
    },
}
_RESOURCE = {
    "type": "object",
    "required": ["resource_type", "key", "op", "changes"],
    "properties": {
        "resource_type": {"type": "string"},
        "key": {"type": "string", "description": "The entry's fullUrl (old -> new)."},
        "op": {"enum": ["added", "removed", "changed"]},
        "changes": {"type": "array", "items": _CHANGE},
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["message_id", "channel", "message_type", "before", "now", "error", "changed", "resources"],
    "properties": {
        "message_id": {"type": "string"},
        "channel": {"type": "string"},
        "message_type": {"type": "string"},
        "before": {"type": "string", "description": "The stored status."},
        "now": {"enum": ["transformed", "error", "filtered", "skipped"]},
        "error": {"type": ["string", "null"]},
        "changed": {"type": "boolean"},
        "resources": {"type": "array", "items": _RESOURCE},
    },
}

_SUMMARY = {
    "type": "object",
    "required": ["resource_type", "path", "op", "count"],
    "properties": {
        "resource_type": {"type": "string"},
        "path": {"type": "string"},
        "op": {"type": "string"},
        "count": {"type": "integer"},
    },
}

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/diff": {"post": operation(
        "What the mappings on disk now would change in stored messages' FHIR (content: audited)", "operator",
        "diffMappings",
        {"type": "object", "required": ["messages", "changed", "summary"], "properties": {
            "messages": {"type": "array", "items": _MESSAGE}, "changed": {"type": "integer"},
            "summary": {"type": "array", "items": _SUMMARY}}},
        body=selection_schema(limit={"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 20,
                                     "description": "How many stored messages, newest first."}),
        errors=(400, 408, 413, 422))},
}  # fmt: skip
