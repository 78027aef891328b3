"""``GET /api/v1/queues`` (viewer): what waits, per channel and destination: depth (deliveries not finished:
pending, waiting behind an earlier message of the same patient, retrying; by status) and the age in seconds of
the oldest message waiting; per channel also the messages not yet processed (``destination`` null). Every
configured destination is listed, at depth 0 when nothing waits. SQL of the store
(``engine.store.overview.queue_depths``); no content.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation
from engine.config.channel import Channel
from engine.store import Store
from engine.store.overview import queue_depths

__all__ = ["routes", "rows", "table"]


def rows(admin: Admin) -> list[dict[str, Any]]:
    """The queue table (blocking: the store is read)."""
    return table(admin.store, admin.control.channels)


def table(store: Store, channels: Sequence[Channel]) -> list[dict[str, Any]]:
    """The rows of :func:`rows` for ``channels``, from the store alone (also ``interlink status`` when no
    engine answers)."""
    now = time.time()
    found = {(q.channel, q.destination): q for q in queue_depths(store)}
    keys: list[tuple[str, str | None]] = [(c.name, None) for c in channels]
    keys += [(c.name, d.name) for c in channels for d in c.destinations]
    keys += sorted((k for k in found if k not in set(keys)), key=lambda k: (k[0], k[1] or ""))
    out = []
    for channel, destination in keys:
        q = found.get((channel, destination))
        oldest = q.oldest_received_at if q else None
        out.append({
            "channel": channel, "destination": destination, "depth": q.depth if q else 0,
            "by_status": q.by_status if q else {},
            "oldest_age_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        })  # fmt: skip
    return out


def routes(admin: Admin) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        await admin.access.require(request, Role.viewer)
        return json({"queues": await asyncio.to_thread(rows, admin)})

    return [Route(f"{PREFIX}/queues", listing, methods=["GET"])]


OPENAPI: dict[str, Any] = {
    f"{PREFIX}/queues": {
        "get": operation("Queue depth and the age of the oldest waiting message, per channel and destination",
                         "viewer", "listQueues", {"type": "object", "required": ["queues"], "properties": {
                             "queues": {"type": "array", "items": {
                                 "type": "object", "required": ["channel", "destination", "depth", "oldest_age_s"],
                                 "properties": {
                                     "channel": {"type": "string"},
                                     "destination": {"type": ["string", "null"],
                                                     "description": "null: messages not yet processed"},
                                     "depth": {"type": "integer", "minimum": 0},
                                     "by_status": {"type": "object",
                                                   "additionalProperties": {"type": "integer"}},
                                     "oldest_age_s": {"type": ["number", "null"]}}}}}}),
    },
}  # fmt: skip
