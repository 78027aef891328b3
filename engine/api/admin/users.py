"""``/api/v1/users`` (admin): the names tokens were given to (engine/store/users.py), and revoking every live
token of one name at once.

A name may be a person's name, so the audit rows of a revocation name only token ids: one ``user.revoke`` row
per token revoked (target = its id, no message ids); revoking a name whose tokens are all revoked already
changes nothing and records nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store.access import ROLES
from engine.store.users import User, revoke_user, users

__all__ = ["routes", "user_json"]


def user_json(u: User) -> dict[str, Any]:
    return {"name": u.name, "roles": list(u.roles), "live": u.live, "revoked": u.revoked,
            "created_at": u.created_at, "last_used_at": u.last_used_at}  # fmt: skip


def routes(admin: Admin) -> list[BaseRoute]:
    access = admin.access

    async def list_users(request: Request) -> Response:
        await access.require(request, Role.admin)
        return json({"users": [user_json(u) for u in await asyncio.to_thread(users, access.tokens)]})

    async def revoke(request: Request) -> Response:
        who = await access.require(request, Role.admin)
        name = request.path_params["name"]
        revoked = await asyncio.to_thread(revoke_user, access.tokens, name)
        if revoked is None:
            raise Problem(404, "unknown-user", "no token was given to this name")
        for token_id in revoked:
            await access.record(who, "user.revoke", target=token_id)
        user = next(u for u in await asyncio.to_thread(users, access.tokens) if u.name == name)
        return json({**user_json(user), "revoked_tokens": revoked})

    return [
        Route(f"{PREFIX}/users", list_users, methods=["GET"]),
        # path: a name may hold a "/" (token names are free text)
        Route(f"{PREFIX}/users/{{name:path}}/revoke", revoke, methods=["POST"]),
    ]


_USER: dict[str, Any] = {
    "type": "object",
    "required": ["name", "roles", "live", "revoked", "created_at", "last_used_at"],
    "properties": {
        "name": {"type": "string"},
        "roles": {"type": "array", "items": {"enum": list(ROLES)}, "description": "Held by its live tokens."},
        "live": {"type": "integer"}, "revoked": {"type": "integer"},
        "created_at": {"type": "number", "description": "Its first token's creation."},
        "last_used_at": {"type": ["number", "null"], "description": "The latest use of any of its tokens."},
    },
}  # fmt: skip

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/users": {
        "get": operation("List the names tokens were given to, with their tokens' roles and counts", "admin",
                         "listUsers", {"type": "object", "required": ["users"],
                                       "properties": {"users": {"type": "array", "items": _USER}}}),
    },
    f"{PREFIX}/users/{{name}}/revoke": {
        "post": operation("Revoke every live token of a name (audited per token id)", "admin", "revokeUser",
                          {**_USER, "required": [*_USER["required"], "revoked_tokens"],
                           "properties": {**_USER["properties"], "revoked_tokens": {
                               "type": "array", "items": {"type": "string"},
                               "description": "The ids revoked by this call."}}},
                          parameters=[param("name", "path")], errors=(404,)),
    },
}  # fmt: skip
