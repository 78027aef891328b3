"""The ASGI app of the engine's HTTP server: one Starlette app, one module per concern.

``create_app(readiness, webhooks, admin)`` mounts the probes (``health``), the webhook intake (``webhooks``),
the OpenAPI document (``openapi``) and, given an ``Admin``, the admin API (``engine.api.admin``, ``/api/v1``)
and the web dashboard that uses it (``engine.api.dashboard``: ``/`` and ``/static/…``).
Every error is an RFC 9457 problem (``problems``): Starlette's own 404/405 included, and an unexpected
exception is a 500 problem that says nothing about it (its type goes to the log, its text nowhere).
"""

from __future__ import annotations

import logging

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api import dashboard, health, openapi, webhooks
from engine.api.admin import Admin
from engine.api.admin import routes as admin_routes
from engine.api.health import Readiness
from engine.api.problems import Problem
from engine.api.webhooks import WebhookRoutes

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_SLUGS = {404: "not-found", 405: "method-not-allowed"}


def create_app(readiness: Readiness, webhook_routes: WebhookRoutes, admin: Admin | None = None) -> Starlette:
    document = orjson.dumps(openapi.document())

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        return Problem(exc.status_code, _SLUGS.get(exc.status_code, "http-error"), headers=headers).response()

    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("HTTP %s %s failed: %s", request.method, request.url.path.split("/", 2)[1][:40], type(exc).__name__)
        return Problem(500, "internal-error").response()

    routes: list[BaseRoute] = [
        *health.routes(readiness),
        *webhooks.routes(webhook_routes),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *(admin_routes(admin) if admin is not None else []),
        *(dashboard.routes(admin) if admin is not None else []),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={Problem: on_problem, HTTPException: on_http, Exception: on_error},
    )
