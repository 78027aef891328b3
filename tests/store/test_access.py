"""Admin API tokens and the audit trail on SQLite and PostgreSQL: only the hash is stored, verification by
hash, revocation, last use written at most once a minute, audit pages by cursor and their filters."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from engine.store import Store
from engine.store.access import USE_WRITE_EVERY_S, AuditTrail, Tokens
from engine.store.schema import api_tokens


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


def test_only_the_hash_is_stored_and_revoked_tokens_do_not_verify(store: Store) -> None:
    tokens = Tokens(store)
    token, secret = tokens.create("operator", "nightly")
    assert secret.startswith("il_") and len(secret) >= 3 + 43
    with store.work.connect() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == token.id)).one()
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(tuple(row))
    found = tokens.verify(secret)
    assert found is not None and (found.id, found.role, found.name) == (token.id, "operator", "nightly")
    assert tokens.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert tokens.verify("not-a-token") is None
    assert tokens.revoke(token.id) is True
    assert tokens.revoke(token.id) is False  # already revoked
    assert tokens.verify(secret) is None
    [listed] = [t for t in tokens.list() if t.id == token.id]
    assert listed.revoked_at is not None
    with pytest.raises(ValueError):
        tokens.create("root")


def test_last_use_is_written_at_most_once_a_minute(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    token, secret = Tokens(store).create("viewer")
    clock = [1_000_000.0]
    monkeypatch.setattr("engine.store.access.time.time", lambda: clock[0])
    first, other_process = Tokens(store), Tokens(store)
    first.verify(secret)
    assert first.get(token.id).last_used_at == clock[0]  # type: ignore[union-attr]
    clock[0] += USE_WRITE_EVERY_S / 2
    first.verify(secret)
    other_process.verify(secret)  # its own memory says never, the row says recently: no write either
    assert first.get(token.id).last_used_at == 1_000_000.0  # type: ignore[union-attr]
    clock[0] += USE_WRITE_EVERY_S
    first.verify(secret)
    assert first.get(token.id).last_used_at == clock[0]  # type: ignore[union-attr]


def test_audit_pages_and_filters(store: Store) -> None:
    trail = AuditTrail(store)
    since = trail.page(limit=1).entries[0].at if trail.page(limit=1).entries else 0.0  # a shared database
    t1, t2, m = secrets.token_hex(4), secrets.token_hex(4), secrets.token_hex(4)  # this test's rows only
    ids = [trail.append(token_id=t1, actor="a", role="operator", action="message.read",
                        message_ids=[f"{m}-{i}"], peer="10.0.0.1") for i in range(7)]  # fmt: skip
    ids.append(trail.append(token_id=t2, actor="b", role="admin", action="channel.stop", target="lab"))
    page = trail.page(limit=3, since=since)
    seen = [e.id for e in page.entries]
    while page.next_cursor:
        page = trail.page(limit=3, since=since, cursor=page.next_cursor)
        seen += [e.id for e in page.entries]
    assert [i for i in seen if i in ids] == sorted(ids, reverse=True)
    assert [e.target for e in trail.page(action="channel.", token_id=t2).entries] == ["lab"]
    assert len(trail.page(action="message.read", token_id=t1).entries) == 7
    assert [e.actor for e in trail.page(token_id=t2).entries] == ["b"]
    assert [e.message_ids for e in trail.page(message_id=f"{m}-1").entries] == [(f"{m}-1",)]
    assert trail.page(message_id=f"{m}-%").entries == []  # LIKE wildcards are text
    newest = trail.page(limit=1).entries[0]
    assert trail.page(since=newest.at).entries[0].id == newest.id
    with pytest.raises(ValueError):
        trail.page(cursor="1 OR 1=1")


def test_audit_rows_cannot_be_changed_or_deleted_in_the_database(store: Store) -> None:
    row = AuditTrail(store).append(token_id="", actor="a", role="admin", action="token.create")
    for statement in ("UPDATE audit SET actor = 'someone else' WHERE id = :id", "DELETE FROM audit WHERE id = :id"):
        with pytest.raises(DBAPIError, match="append-only"), store.work.begin() as conn:
            conn.execute(text(statement), {"id": row})
    [entry] = [e for e in AuditTrail(store).page(limit=5).entries if e.id == row]
    assert entry.actor == "a"
