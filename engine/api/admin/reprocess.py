"""``POST /api/v1/messages/reprocess`` (one id or a filtered set, ``?dry_run=true`` counts) and
``POST /api/v1/messages/{id}/redeliver`` (one message to a named destination, on purpose): operator.

Reprocess runs messages again from their raw content with the mappings the engine runs (in error or dead,
or another status of ``operations.REPROCESSABLE`` named by the filter); they go straight to the running
engine's process queue, batch by batch. Redeliver sends a message's stored bundle again to a destination of
its channel as the engine runs it now (e.g. one added since it was sent); a duplicate goes out as its
original (it was never mapped). Audited: ``message.reprocess`` (one row per batch), ``message.redeliver``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json, read_json
from engine.api.admin.selecting import DRY_RUN, DRY_RUN_ANSWER, act_in_batches, dry_run, selection, selection_schema
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store import operations as ops

__all__ = ["OPENAPI", "routes"]

_STATUS = {"not-found": 404, "unknown-destination": 422, "no-bundle": 409, "conflict": 409}


def routes(admin: Admin) -> list[BaseRoute]:
    access, store, control = admin.access, admin.store, admin.control

    async def reprocess(request: Request) -> Response:
        who = await access.require(request, Role.operator)
        sel = selection(await read_json(request))
        try:
            count = await asyncio.to_thread(ops.count_reprocess, store, sel)
        except ValueError as exc:
            raise Problem(422, "invalid-selection", str(exc)) from None
        if dry_run(request):
            return json({"dry_run": True, "count": count})
        done = await act_in_batches(access, who, "message.reprocess", sel, lambda: ops.reprocess(store, sel),
                                    control.enqueue_process, list)  # fmt: skip
        return json({"reprocessed": len(done), "message_ids": done[:1000]})

    async def redeliver(request: Request) -> Response:
        who = await access.require(request, Role.operator)
        message_id = request.path_params["message_id"]
        body = await read_json(request)
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise Problem(422, "destination-required", "destination: the name of a destination of the channel")
        row = await asyncio.to_thread(store.message, message_id)
        if row is None:
            raise Problem(404, "not-found", "no message of this id")
        try:
            target = ops.destination_target(control.channels, row.channel, destination)
            done = await asyncio.to_thread(ops.redeliver, store, message_id, destination, target=target)
        except ops.Refused as exc:
            await access.record(who, "message.redeliver", target=destination, message_ids=[message_id],
                                outcome="refused")  # fmt: skip
            raise Problem(_STATUS.get(exc.slug, 409), exc.slug, exc.detail) from None
        control.enqueue_deliver(done.message_id, done.destination)
        ids = [done.message_id, *([done.duplicate] if done.duplicate else [])]
        await access.record(who, "message.redeliver", target=destination, message_ids=ids)
        return json(
            {"message_id": done.message_id, "destination": done.destination, "duplicate_of_it": done.duplicate or None},
            status=202,
        )

    return [
        Route(f"{PREFIX}/messages/reprocess", reprocess, methods=["POST"]),
        Route(f"{PREFIX}/messages/{{message_id}}/redeliver", redeliver, methods=["POST"]),
    ]


OPENAPI: dict[str, Any] = {
    f"{PREFIX}/messages/reprocess": {"post": operation(
        "Run messages again from raw (in error or dead by default) at once; dry_run counts", "operator",
        "reprocessMessages",
        {"oneOf": [DRY_RUN_ANSWER, {"type": "object", "required": ["reprocessed", "message_ids"], "properties": {
            "reprocessed": {"type": "integer"}, "message_ids": {"type": "array", "items": {"type": "string"}}}}]},
        parameters=[DRY_RUN], body=selection_schema(), errors=(400, 408, 413, 422))},
    f"{PREFIX}/messages/{{message_id}}/redeliver": {"post": operation(
        "Deliver a sent message's bundle again to a destination of its channel (a duplicate: its original's)",
        "operator", "redeliverMessage",
        {"type": "object", "required": ["message_id", "destination", "duplicate_of_it"], "properties": {
            "message_id": {"type": "string", "description": "The message whose bundle goes out."},
            "destination": {"type": "string"},
            "duplicate_of_it": {"type": ["string", "null"], "description": "The duplicate asked for, if one."}}},
        status=202, parameters=[param("message_id", "path", "The message id.")],
        body={"type": "object", "required": ["destination"], "additionalProperties": False, "properties": {
            "destination": {"type": "string", "description": "A destination of the message's channel."}}},
        errors=(400, 404, 408, 409, 413, 422))},
}  # fmt: skip
