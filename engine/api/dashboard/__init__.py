"""The web dashboard: ``GET /`` (the page) and ``GET /static/{name}`` (its script and style sheet).

Contract:

- The page is three files shipped as package data (``static/``: ``index.html``, ``app.js``, ``app.css``),
  plain JavaScript with no build step and nothing fetched from elsewhere at run time. They are read once
  when the routes are made and served from memory, by a fixed list of names (no path is ever built from
  the request), with an ``ETag`` (a repeat load is a 304).
- Every answer carries a strict Content-Security-Policy (:data:`CSP`: scripts and styles only from these
  files, no inline script or style, no plugin, no framing, no ``<base>``), ``nosniff`` and
  ``no-referrer``. The script inserts every value it gets from the API as text (DOM nodes, never
  ``innerHTML``), so message content such as a ``<script>`` in a patient name shows as text.
- The page needs no authentication to load: it holds no data. It asks for a token, keeps it in the
  tab's ``sessionStorage`` (never in a URL or cookie) and sends it as ``Authorization: Bearer`` to the
  admin API, including the live updates of ``GET /api/v1/events`` (``engine.api.admin.events``), which it
  reads with ``fetch()`` streaming because ``EventSource`` cannot send that header.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.problems import Problem

if TYPE_CHECKING:
    from engine.api.admin import Admin

__all__ = ["CSP", "SECURITY_HEADERS", "routes"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

#: the files served, by name, with their media types
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str

    def response(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": self.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def _load() -> dict[str, _Asset]:
    folder = resources.files(__package__ or __name__).joinpath("static")
    assets = {}
    for name, media_type in _FILES.items():
        body = folder.joinpath(name).read_bytes()
        assets[name] = _Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def routes(admin: Admin | None = None) -> list[BaseRoute]:
    """``/`` and ``/static/{name}``; ``admin`` is unused (the page holds no data) but keeps the admin
    modules' signature."""
    assets = _load()

    async def page(request: Request) -> Response:
        return assets["index.html"].response(request)

    async def static(request: Request) -> Response:
        asset = assets.get(request.path_params["name"])
        if asset is None or request.path_params["name"] == "index.html":
            raise Problem(404, "not-found", headers=dict(SECURITY_HEADERS))
        return asset.response(request)

    async def favicon(request: Request) -> Response:  # browsers ask for it; none is shipped
        return Response(status_code=204, headers=SECURITY_HEADERS)

    return [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
    ]
