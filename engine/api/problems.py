"""HTTP problem responses (RFC 9457, ``application/problem+json``): every error the HTTP server answers.

A :class:`Problem` is raised anywhere below a route and turned into its response by the app's exception
handler. Its fields are fixed words chosen by the engine: ``type`` (a URN naming the problem), ``title``,
``status``, ``detail`` (a place such as ``$.resourceType`` or ``PID-3``, never a value the sender sent)
and, when the request was stored anyway, ``message_id``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["MEDIA_TYPE", "TYPE_PREFIX", "Problem", "problem_response"]

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:interlink:problem:"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An error answered as ``application/problem+json``; ``slug`` names it (``too-large``, ``bad-signature``)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.message_id = message_id
        self.extra = extra or {}
        super().__init__(f"{status} {slug}")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": TYPE_PREFIX + self.slug, "title": _TITLES.get(self.status, "Error"),
                               "status": self.status}  # fmt: skip
        if self.detail:
            out["detail"] = self.detail
        if self.message_id:
            out["message_id"] = self.message_id
        out.update(self.extra)
        return out

    def response(self) -> Response:
        return problem_response(self)


def problem_response(problem: Problem) -> Response:
    return Response(orjson.dumps(problem.body()), status_code=problem.status, media_type=MEDIA_TYPE,
                    headers=problem.headers)  # fmt: skip
