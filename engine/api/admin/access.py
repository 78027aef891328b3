"""Who may call the admin API: bearer tokens with a role, and the audit trail of what they did.

``await access.require(request, Role.operator) -> Principal`` is the first line of every admin route. It reads
only the ``Authorization: Bearer …`` header, never the body, so an unauthenticated request is answered 401
(with ``WWW-Authenticate: Bearer``) before a byte of its body is read; a valid token whose role is too low is
a 403. Roles include the ones below them: ``viewer`` (counters and metadata, never message content) <
``operator`` (content, replay, reprocess) < ``admin`` (channels, tokens, the audit trail).

``await access.record(who, action, target=…, message_ids=…, outcome=…)`` appends one audit row (who, from
where, what, which messages: ids only, never content); every read of message content and every action
records one. Token verification and audit writes run in a thread (``asyncio.to_thread``), off the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from engine.api.problems import Problem
from engine.store import Store
from engine.store.access import AuditTrail, Tokens

__all__ = ["Access", "Principal", "Role"]


class Role(IntEnum):
    """A token's role; a higher role may do everything a lower one may."""

    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its token, the token's name and role, and its client address."""

    token_id: str
    name: str
    role: Role
    peer: str


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Access:
    """Authentication, authorisation and the audit trail of the admin API."""

    def __init__(self, store: Store) -> None:
        self.tokens = Tokens(store)
        self.trail = AuditTrail(store)

    async def require(self, request: Request, role: Role) -> Principal:
        """The caller, if its bearer token is valid and its role at least ``role``; else a 401/403 problem."""
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Problem(401, "unauthenticated", "a bearer token is required (Authorization header)",
                          headers=_CHALLENGE)  # fmt: skip
        try:
            token = await asyncio.to_thread(self.tokens.verify, secret)
        except SQLAlchemyError:
            raise Problem(503, "store-unavailable", "tokens cannot be checked now",
                          headers={"Retry-After": "5"}) from None  # fmt: skip
        if token is None:
            raise Problem(401, "unauthenticated", "unknown or revoked token", headers=_INVALID)
        have = Role[token.role]
        if have < role:
            raise Problem(403, "forbidden", f"needs the {role.name} role")
        peer = request.client.host if request.client else ""
        return Principal(token.id, token.name, have, peer)

    async def record(
        self,
        who: Principal,
        action: str,
        *,
        target: str = "",
        message_ids: Sequence[str] = (),
        outcome: str = "ok",
    ) -> None:
        """Append one audit row: ``action`` such as ``message.read``, ``channel.stop``; ids, never content."""
        await asyncio.to_thread(
            self.trail.append,
            token_id=who.token_id, actor=who.name, role=who.role.name, action=action, target=target,
            message_ids=tuple(message_ids), peer=who.peer, outcome=outcome,
        )  # fmt: skip
