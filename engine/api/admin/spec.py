"""The admin API's part of the OpenAPI document (``engine/api/openapi.py`` merges :func:`paths`).

An admin module describes its routes in a module-level ``OPENAPI`` dict (path -> operations), built with
:func:`operation`, which adds the bearer security, the role in the summary and the 401/403 problems every
admin route can answer; :func:`paths` collects them from every module in ``MODULES``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SCHEMAS", "operation", "param", "paths"]

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

_WHY = {
    400: "A parameter or the body is not as documented (`detail` names it).",
    401: "No bearer token, or an unknown or revoked one (answered before the body is read).",
    403: "The token's role is too low for this route.",
    404: "Nothing of this name or id.",
    405: "Method not allowed on this path.",
    408: "The body did not arrive in time.",
    409: "The channel could not be started (its address; see `detail`).",
    413: "The body is too large.",
    422: "Readable but refused (`detail` names the field, or the file and line of a channel file).",
    503: "The store cannot be read now (tokens cannot be checked); try again after Retry-After.",
}


def problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _WHY[s], "content": _PROBLEM} for s in statuses}


def param(name: str, where: str = "query", description: str = "", **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": description,
            "schema": schema or {"type": "string"}}  # fmt: skip


def operation(
    summary: str,
    role: str,
    op_id: str,
    ok: dict[str, Any],
    *,
    status: int = 200,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (),
) -> dict[str, Any]:
    """One operation: its JSON answer ``ok`` (a schema), ``role`` needed, and the problems it may answer."""
    out: dict[str, Any] = {
        "summary": f"{summary} ({role})",
        "operationId": op_id,
        "security": [{"bearer": []}],
        "parameters": parameters or [],
        "responses": {
            str(status): {"description": "Done.", "content": {"application/json": {"schema": ok}}},
            **problems(*sorted({401, 403, 503, *errors})),
        },
    }
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return out


#: schemas shared by admin modules (merged into the document's components)
SCHEMAS: dict[str, Any] = {}


def paths() -> dict[str, Any]:
    """Every admin module's ``OPENAPI`` paths."""
    from engine.api.admin import MODULES

    out: dict[str, Any] = {}
    for name in MODULES:
        out.update(getattr(importlib.import_module(f"engine.api.admin.{name}"), "OPENAPI", {}))
    return out
