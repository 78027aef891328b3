"""``/api/v1/tokens`` (admin): list tokens, create one (its secret shown once, in that answer only), revoke one;
``/api/v1/me`` (any role): the caller's token id, name and role.

A token's ``name`` is the person or system it was given to: that name is the admin API's user (there is no
user table; ``/api/v1/users``, engine/api/admin/users.py, groups tokens by it and revokes a name's tokens).

Revocation keeps the row (the audit trail names token ids); there is no deletion. Listings never carry a
secret or its hash. Creating and revoking are audited (``token.create``, ``token.revoke``; target = the id).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.api.admin import PREFIX, Admin, Role, json, read_json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store.access import ROLES, Token

__all__ = ["routes", "token_json"]


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "last_used_at": t.last_used_at,
            "revoked_at": t.revoked_at}  # fmt: skip


def routes(admin: Admin) -> list[BaseRoute]:
    access = admin.access

    async def me(request: Request) -> Response:
        who = await access.require(request, Role.viewer)
        return json({"token_id": who.token_id, "name": who.name, "role": who.role.name})

    async def list_tokens(request: Request) -> Response:
        await access.require(request, Role.admin)
        return json({"tokens": [token_json(t) for t in await asyncio.to_thread(access.tokens.list)]})

    async def create(request: Request) -> Response:
        who = await access.require(request, Role.admin)
        body = await read_json(request)
        role, name = body.get("role"), body.get("name", "")
        if role not in ROLES:
            raise Problem(422, "invalid-role", "role: one of " + ", ".join(ROLES))
        if not isinstance(name, str) or len(name) > 100:
            raise Problem(422, "invalid-name", "name: a string of at most 100 characters")
        token, secret = await asyncio.to_thread(access.tokens.create, role, name)
        await access.record(who, "token.create", target=token.id)
        return json({**token_json(token), "token": secret}, status=201,
                    headers={"Location": f"{PREFIX}/tokens/{token.id}", "Cache-Control": "no-store"})  # fmt: skip

    async def revoke(request: Request) -> Response:
        who = await access.require(request, Role.admin)
        token_id = request.path_params["token_id"]
        if not await asyncio.to_thread(access.tokens.revoke, token_id):
            found = await asyncio.to_thread(access.tokens.get, token_id)
            if found is None:
                raise Problem(404, "unknown-token", "no token of this id")
            return json(token_json(found))  # already revoked: nothing to do, nothing audited
        await access.record(who, "token.revoke", target=token_id)
        revoked = await asyncio.to_thread(access.tokens.get, token_id)
        assert revoked is not None
        return json(token_json(revoked))

    return [
        Route(f"{PREFIX}/me", me, methods=["GET"]),
        Route(f"{PREFIX}/tokens", list_tokens, methods=["GET"]),
        Route(f"{PREFIX}/tokens", create, methods=["POST"]),
        Route(f"{PREFIX}/tokens/{{token_id}}", revoke, methods=["DELETE"]),
    ]


_TOKEN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "role", "created_at", "last_used_at", "revoked_at"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "role": {"enum": list(ROLES)}, "created_at": {"type": "number"},
        "last_used_at": {"type": ["number", "null"]}, "revoked_at": {"type": ["number", "null"]},
        "token": {"type": "string", "description": "The secret: in the answer to its creation only."},
    },
}  # fmt: skip

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/me": {
        "get": operation("The caller's token: id, name and role (a login check)", "viewer", "whoAmI",
                         {"type": "object", "required": ["token_id", "name", "role"], "properties": {
                             "token_id": {"type": "string"}, "name": {"type": "string"},
                             "role": {"enum": list(ROLES)}}}),
    },
    f"{PREFIX}/tokens": {
        "get": operation("List tokens (never their secrets)", "admin", "listTokens",
                         {"type": "object", "required": ["tokens"],
                          "properties": {"tokens": {"type": "array", "items": _TOKEN}}}),
        "post": operation("Create a token; its secret is in this answer only", "admin", "createToken", _TOKEN,
                          status=201, errors=(400, 408, 413, 422),
                          body={"type": "object", "required": ["role"], "properties": {
                              "role": {"enum": list(ROLES)}, "name": {"type": "string", "maxLength": 100}}}),
    },
    f"{PREFIX}/tokens/{{token_id}}": {
        "delete": operation("Revoke a token (kept, marked revoked)", "admin", "revokeToken", _TOKEN,
                            parameters=[param("token_id", "path")], errors=(404,)),
    },
}  # fmt: skip
