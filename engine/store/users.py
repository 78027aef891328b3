"""Users of the admin API: a user is the name tokens were given to (``api_tokens.name``); there is no user table.

:func:`users` groups every token by name: the roles its live tokens hold, live and revoked counts, when its
first token was made and when any of them was last used. :func:`revoke_user` revokes every live token of a
name through :meth:`Tokens.revoke` (a token made while it runs may stay live). Both are synchronous (run them
off the event loop); a name is never logged here.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.store.access import ROLES, Token, Tokens

__all__ = ["User", "revoke_user", "users"]


@dataclass(frozen=True, slots=True)
class User:
    """A name and what its tokens add up to."""

    name: str
    #: roles held by its live tokens, lowest first (empty when all are revoked)
    roles: tuple[str, ...]
    live: int
    revoked: int
    #: when its first token was created
    created_at: float
    #: the latest use of any of its tokens (None: never used)
    last_used_at: float | None


def users(tokens: Tokens) -> list[User]:
    """Every name with a token, revoked ones included, by name."""
    by_name: dict[str, list[Token]] = {}
    for t in tokens.list():
        by_name.setdefault(t.name, []).append(t)
    out = []
    for name in sorted(by_name):
        group = by_name[name]
        live = [t for t in group if t.revoked_at is None]
        used = [t.last_used_at for t in group if t.last_used_at is not None]
        out.append(User(name, tuple(r for r in ROLES if any(t.role == r for t in live)), len(live),
                        len(group) - len(live), min(t.created_at for t in group), max(used, default=None)))  # fmt: skip
    return out


def revoke_user(tokens: Tokens, name: str) -> list[str] | None:
    """Revoke every live token of ``name``: the ids revoked now (empty when none was live), None when no token
    has this name."""
    group = [t for t in tokens.list() if t.name == name]
    if not group:
        return None
    return [t.id for t in group if t.revoked_at is None and tokens.revoke(t.id)]
