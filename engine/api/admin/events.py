"""Live updates for the dashboard: ``GET /api/v1/events`` (viewer), a Server-Sent Events stream.

Every :data:`INTERVAL_S` the stream sends one ``stats`` event whose data is a JSON object
``{"at": <epoch s>, "channels": [...], "queues": [...]}``: the same rows, from the same code, as
``GET /api/v1/channels`` and ``GET /api/v1/queues`` (counters and queue depths: metadata only, never
content). A ``retry`` line first tells a client how long to wait before it reconnects.

Authentication is the bearer header like every admin route (checked once, when the stream opens; a token
revoked later ends at the next reconnection). Browsers' ``EventSource`` cannot send that header, so the
dashboard reads the stream with ``fetch()``. The counts are read in a thread, off the event loop, once per
interval for each open stream; the stream ends when the client goes away (Starlette cancels it on the
disconnect) and as soon as the engine begins to stop (``Admin.closing``), so an open dashboard never holds
the server's shutdown for its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, channels, queues
from engine.api.admin.spec import operation

__all__ = ["INTERVAL_S", "OPENAPI", "routes", "sample"]

#: seconds between two samples of one stream
INTERVAL_S = 1.0
_RETRY_MS = 2000
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sample(admin: Admin) -> dict[str, Any]:
    """One ``stats`` event's data (blocking: the store is read)."""
    return {"at": time.time(), "channels": channels.rows(admin), "queues": queues.rows(admin)}


def routes(admin: Admin) -> list[BaseRoute]:
    async def events(request: Request) -> Response:
        await admin.access.require(request, Role.viewer)
        return StreamingResponse(_stream(admin), media_type="text/event-stream", headers=_HEADERS)

    return [Route(f"{PREFIX}/events", events, methods=["GET"])]


async def _stream(admin: Admin) -> AsyncIterator[bytes]:
    yield f"retry: {_RETRY_MS}\n\n".encode()
    while not admin.closing.is_set():
        data = await asyncio.to_thread(sample, admin)
        yield b"event: stats\ndata: " + orjson.dumps(data) + b"\n\n"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(admin.closing.wait(), INTERVAL_S)


def _described() -> dict[str, Any]:
    op = operation("Live channel counters and queue depths, one `stats` event a second (Server-Sent Events)",
                   "viewer", "events", {})  # fmt: skip
    op["responses"]["200"] = {
        "description": "A stream of `event: stats` whose `data` is JSON: `at` (epoch s), `channels` (the rows of "
        "GET /api/v1/channels) and `queues` (the rows of GET /api/v1/queues). It lasts until the client leaves.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    return op


OPENAPI: dict[str, Any] = {f"{PREFIX}/events": {"get": _described()}}
