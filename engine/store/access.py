"""Admin API tokens and the audit trail (tables ``api_tokens`` and ``audit``, migration 0007).

:class:`Tokens`: a token is ``il_`` + 32 random bytes (URL-safe base64), shown once by :meth:`Tokens.create`;
the store keeps only its SHA-256 (hex). :meth:`Tokens.verify` hashes what was presented, finds the row by
that hash (one indexed lookup; unique index) and compares the hashes in constant time. A revoked token
verifies as nothing. ``last_used_at`` is written at most once a minute per token (``USE_WRITE_EVERY_S``),
so a busy client does not cost a write per request.

:class:`AuditTrail`: appends rows and lists them newest first by id with a keyset cursor (``id < cursor``):
rows inserted while someone pages are newer than the first page, so a page never repeats or skips a row
that existed when paging began. There is no verb that updates or deletes a row.

Both are synchronous (they run in a thread off the event loop: ``asyncio.to_thread``) and write through the
store's durable engine (``Store.ingest``): a token or an audit row, once answered, survives a power loss.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update

from engine.store.repository import Store
from engine.store.schema import api_tokens, audit

__all__ = ["ROLES", "USE_WRITE_EVERY_S", "AuditEntry", "AuditPage", "AuditTrail", "Token", "Tokens", "secret_hash"]

#: role names, lowest first (engine.api.admin.access.Role gives them their order)
ROLES = ("viewer", "operator", "admin")

#: ``last_used_at`` is written at most this often per token (s)
USE_WRITE_EVERY_S = 60.0

_PREFIX = "il_"


def secret_hash(secret: str) -> str:
    """The stored form of a token secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    """A token as listed: never its secret."""

    id: str
    name: str
    role: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class Tokens:
    """Create, verify, list and revoke admin API tokens."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._used: dict[str, float] = {}  # token id -> when last_used_at was last written by this process
        self._lock = threading.Lock()

    def create(self, role: str, name: str = "") -> tuple[Token, str]:
        """A new token and its secret (the only time the secret exists outside the caller)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        secret = _PREFIX + secrets.token_urlsafe(32)
        token = Token(secrets.token_hex(8), name or role, role, time.time(), None, None)
        with self._store._writing(self._store.ingest) as conn:
            conn.execute(
                insert(api_tokens).values(
                    id=token.id, name=token.name[:100], role=role, secret_hash=secret_hash(secret),
                    created_at=token.created_at,
                )
            )  # fmt: skip
        return token, secret

    def verify(self, secret: str) -> Token | None:
        """The token this secret belongs to, or None (unknown, malformed or revoked)."""
        if not secret.startswith(_PREFIX) or len(secret) > 100:
            return None
        digest = secret_hash(secret)
        with self._store.work.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.secret_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.secret_hash, digest) or row.revoked_at is not None:
            return None
        self._note_use(row.id)
        return Token(row.id, row.name, row.role, row.created_at, row.last_used_at, row.revoked_at)

    def _note_use(self, token_id: str) -> None:
        now = time.time()
        with self._lock:
            if now - self._used.get(token_id, 0.0) < USE_WRITE_EVERY_S:
                return
            self._used[token_id] = now
        stale = or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at < now - USE_WRITE_EVERY_S)
        with self._store._writing(self._store.work) as conn:
            conn.execute(update(api_tokens).where(api_tokens.c.id == token_id, stale).values(last_used_at=now))

    def list(self) -> list[Token]:
        """Every token, revoked ones included, oldest first."""
        with self._store.work.connect() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id))
            return [Token(r.id, r.name, r.role, r.created_at, r.last_used_at, r.revoked_at) for r in rows]

    def get(self, token_id: str) -> Token | None:
        with self._store.work.connect() as conn:
            r = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return None if r is None else Token(r.id, r.name, r.role, r.created_at, r.last_used_at, r.revoked_at)

    def revoke(self, token_id: str) -> bool:
        """Revoke a token (the row stays, for the audit trail's sake); False when unknown or already revoked."""
        with self._store._writing(self._store.ingest) as conn:
            return bool(
                conn.execute(
                    update(api_tokens)
                    .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                    .values(revoked_at=time.time())
                ).rowcount
            )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who (token id, name, role), from where (peer), what (action on target, message ids)."""

    id: int
    at: float
    token_id: str
    actor: str
    role: str
    action: str
    target: str
    message_ids: tuple[str, ...]
    peer: str
    outcome: str


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    #: pass back as ``cursor`` for the next (older) page; None on the last page
    next_cursor: str | None


class AuditTrail:
    """The append-only audit trail: :meth:`append` and :meth:`page`, nothing else."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def append(
        self,
        *,
        token_id: str,
        actor: str,
        role: str,
        action: str,
        target: str = "",
        message_ids: Sequence[str] = (),
        peer: str = "",
        outcome: str = "ok",
    ) -> int:
        """Append one row (durably) and return its id. ``token_id`` '' is the local CLI."""
        values = {
            "at": time.time(), "token_id": token_id[:16], "actor": actor[:100], "role": role[:16],
            "action": action[:60], "target": target[:200], "message_ids": " ".join(message_ids),
            "peer": peer[:100], "outcome": outcome[:16],
        }  # fmt: skip
        with self._store._writing(self._store.ingest) as conn:
            key = conn.execute(insert(audit).values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def page(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        action: str | None = None,
        token_id: str | None = None,
        message_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> AuditPage:
        """Rows newest first; ``action`` matches exactly or by prefix ending in ``.`` (``channel.``).
        Raises ValueError for a cursor this method did not make."""
        q = select(audit).order_by(audit.c.id.desc()).limit(limit + 1)
        if cursor:
            if not cursor.isdigit() or len(cursor) > 19:
                raise ValueError("cursor")
            q = q.where(audit.c.id < int(cursor))
        if action:
            q = q.where(audit.c.action.startswith(action) if action.endswith(".") else audit.c.action == action)
        if token_id:
            q = q.where(audit.c.token_id == token_id)
        if message_id:
            ids = audit.c.message_ids  # space-separated: the id alone, first, last or between two
            q = q.where(or_(ids == message_id, ids.startswith(message_id + " ", autoescape=True),
                            ids.endswith(" " + message_id, autoescape=True),
                            ids.contains(f" {message_id} ", autoescape=True)))  # fmt: skip
        if since is not None:
            q = q.where(audit.c.at >= since)
        if until is not None:
            q = q.where(audit.c.at < until)
        with self._store.work.connect() as conn:
            rows = list(conn.execute(q))
        entries = [
            AuditEntry(r.id, r.at, r.token_id, r.actor, r.role, r.action, r.target,
                       tuple(r.message_ids.split()), r.peer, r.outcome)
            for r in rows[:limit]
        ]  # fmt: skip
        return AuditPage(entries, str(entries[-1].id) if len(rows) > limit else None)
