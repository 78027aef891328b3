"""The alerts table's verbs: raise, resolve, acknowledge, escalate, remind, and the notification outbox.

Every change is a conditional UPDATE (``… WHERE state = expected``) or an insert that a unique key
refuses, so two evaluators, a worker and an API call racing on one alert cannot make it twice or undo each
other. ``dedupe`` makes one condition one alert: a rule's active alert holds the hash of (channel, rule)
until it resolves (then its own id, freeing the key for the next incident), a critical result the hash of
(message id, observation fullUrl) for good.

The outbox: a state change that someone must hear of sets ``notice`` (raised, reminder, escalated,
resolved) and ``notice_due``; the notifier sends what is due and clears ``notice`` only if it is still the
one it sent (``notified``). A ``resolved`` notice is only queued for an alert whose raise was sent.

Rows hold ids, codes and figures only (``detail``: JSON), never a value from a message.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from engine.store import Store, new_id
from engine.store.schema import ACTIVE_ALERT_STATES, AlertState, alerts

__all__ = ["NOTICES", "AlertBook", "NewAlert", "dedupe_key"]

#: The notices the outbox knows, in the order an alert can need them.
NOTICES = ("raised", "reminder", "escalated", "resolved")


def dedupe_key(*parts: str) -> str:
    """The hash that makes one condition one alert (32 hex digits; no part of it can be read back)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert to raise: where, which rule, its dedupe hash, PHI-free detail, and a message for results."""

    channel: str
    kind: str
    rule: str
    dedupe: str
    detail: dict[str, Any]
    message_id: str | None = None


def _needs_attention() -> Any:
    """Open or escalated alerts, and acknowledged ones still holding (a rule's condition that has not cleared):
    an acknowledged critical result is done."""
    return or_(
        alerts.c.state.in_([AlertState.open.value, AlertState.escalated.value]),
        and_(alerts.c.state == AlertState.acknowledged.value, alerts.c.kind != "critical"),
    )


class AlertBook:
    """Alerts in the message store (table ``alerts``, migration 0008)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _writing(self) -> Any:
        # the store's own writer turn (SQLite: one writer; a thread waiting in SQLite's busy handler sleeps ms)
        return self.store._writing(self.store.work)

    # -- raising ---------------------------------------------------------------------------------------

    def raise_alerts(self, new: Sequence[NewAlert], now: float | None = None) -> list[tuple[str, NewAlert]]:
        """Insert each alert whose dedupe key is free; returns (id, alert) of those raised (not the repeats)."""
        if not new:
            return []
        at = time.time() if now is None else now
        rows: list[dict[str, Any]] = [
            {"id": new_id(), "channel": a.channel, "kind": a.kind, "rule": a.rule, "dedupe": a.dedupe,
             "state": AlertState.open.value, "raised_at": at, "updated_at": at, "message_id": a.message_id,
             "detail": orjson.dumps(a.detail).decode(), "notice": "raised", "notice_due": at}
            for a in new
        ]  # fmt: skip
        with self._writing() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT DO NOTHING
            stmt = dialect.insert(alerts).on_conflict_do_nothing(index_elements=["dedupe"]).returning(alerts.c.id)
            return [(r["id"], a) for r, a in zip(rows, new, strict=True) if conn.execute(stmt, r).first() is not None]

    def resolve(self, alert_id: str, now: float | None = None) -> bool:
        """An active alert's condition cleared: resolved, its dedupe key freed, a notice if its raise was sent."""
        at = time.time() if now is None else now
        with self._writing() as conn:
            return (
                conn.execute(
                    update(alerts)
                    .where(alerts.c.id == alert_id, alerts.c.state.in_([s.value for s in ACTIVE_ALERT_STATES]))
                    .values(
                        state=AlertState.resolved.value,
                        resolved_at=at,
                        updated_at=at,
                        dedupe=alerts.c.id,
                        notice=case((alerts.c.notified_at.is_(None), ""), else_="resolved"),
                        notice_due=at,
                    )
                ).rowcount
                == 1
            )

    def active_rule_alerts(self) -> list[Row[Any]]:
        """Every active alert of a channel rule (not critical results): what a changed configuration may orphan."""
        with self.store.work.connect() as conn:
            return list(
                conn.execute(
                    select(alerts.c.id, alerts.c.channel, alerts.c.rule).where(
                        alerts.c.state.in_([s.value for s in ACTIVE_ALERT_STATES]), alerts.c.kind != "critical"
                    )
                )
            )

    def acknowledge(self, alert_id: str, by: str, now: float | None = None) -> Row[Any] | None:
        """Someone took it: open or escalated → acknowledged (no reminder, no escalation any more).
        Returns the alert afterwards (None: no such alert); acknowledging twice changes nothing."""
        at = time.time() if now is None else now
        with self._writing() as conn:
            conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.state.in_([AlertState.open.value, AlertState.escalated.value]))
                .values(
                    state=AlertState.acknowledged.value,
                    acked_at=at,
                    acked_by=by[:100],
                    updated_at=at,
                    # a reminder or an escalation not yet sent is moot now
                    notice=case((alerts.c.notice.in_(["reminder", "escalated"]), ""), else_=alerts.c.notice),
                )
            )
            return conn.execute(select(alerts).where(alerts.c.id == alert_id)).first()

    def escalate(self, channel: str, older_than: float, now: float | None = None) -> int:
        """Critical alerts of ``channel`` open (not acknowledged) since before ``older_than`` → escalated."""
        at = time.time() if now is None else now
        with self._writing() as conn:
            return conn.execute(
                update(alerts)
                .where(
                    alerts.c.state == AlertState.open.value,
                    alerts.c.kind == "critical",
                    alerts.c.channel == channel,
                    alerts.c.raised_at <= older_than,
                )
                .values(
                    state=AlertState.escalated.value, escalated_at=at, updated_at=at, notice="escalated", notice_due=at
                )
            ).rowcount

    def remind(self, alert_id: str, notified_before: float, now: float | None = None) -> bool:
        """An open alert last notified before ``notified_before``, with nothing pending: notify it again."""
        at = time.time() if now is None else now
        with self._writing() as conn:
            return (
                conn.execute(
                    update(alerts)
                    .where(
                        alerts.c.id == alert_id,
                        alerts.c.state == AlertState.open.value,
                        alerts.c.notice == "",
                        alerts.c.notified_at <= notified_before,
                    )
                    .values(notice="reminder", notice_due=at)
                ).rowcount
                == 1
            )

    # -- reads -----------------------------------------------------------------------------------------

    def active(self, channel: str, rule: str) -> Row[Any] | None:
        """The active (open, acknowledged or escalated) alert of a channel rule, by its dedupe key."""
        with self.store.work.connect() as conn:
            return conn.execute(select(alerts).where(alerts.c.dedupe == dedupe_key("rule", channel, rule))).first()

    def last_resolved(self, channel: str, rule: str) -> float | None:
        """When the rule's last alert resolved (for its cool-down)."""
        with self.store.work.connect() as conn:
            return conn.execute(
                select(func.max(alerts.c.resolved_at)).where(
                    alerts.c.channel == channel, alerts.c.rule == rule, alerts.c.state == AlertState.resolved.value
                )
            ).scalar()

    def get(self, alert_id: str) -> Row[Any] | None:
        with self.store.work.connect() as conn:
            return conn.execute(select(alerts).where(alerts.c.id == alert_id)).first()

    def ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids of alerts starting with ``prefix`` (at most ``limit``: two tell an ambiguous prefix)."""
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            return []
        with self.store.work.connect() as conn:
            q = select(alerts.c.id).where(alerts.c.id >= prefix, alerts.c.id < prefix + "g").limit(limit)
            return list(conn.execute(q).scalars())

    def listing(
        self,
        *,
        state: str | None = None,
        channel: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[Row[Any]]:
        """Alerts newest first (ids sort by creation time); ``before``: the last id of the previous page."""
        q = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
        if state == "active":
            q = q.where(_needs_attention())
        elif state:
            q = q.where(alerts.c.state == state)
        if channel:
            q = q.where(alerts.c.channel == channel)
        if kind:
            q = q.where(alerts.c.kind == kind)
        if before:
            q = q.where(alerts.c.id < before)
        with self.store.work.connect() as conn:
            return list(conn.execute(q))

    def count_active(self) -> int:
        """How many alerts need attention (``listing(state="active")``), for the metrics."""
        with self.store.work.connect() as conn:
            return conn.execute(select(func.count()).select_from(alerts).where(_needs_attention())).scalar_one()

    # -- the outbox ------------------------------------------------------------------------------------

    def due(self, now: float, limit: int = 100) -> list[Row[Any]]:
        """Alerts with a notice to send now, oldest due first."""
        with self.store.work.connect() as conn:
            return list(
                conn.execute(
                    select(alerts)
                    .where(alerts.c.notice.in_(NOTICES), alerts.c.notice_due <= now)
                    .order_by(alerts.c.notice_due)
                    .limit(limit)
                )
            )

    def notified(self, alert_id: str, notice: str, now: float | None = None) -> bool:
        """The target took ``notice``: clear it (unless another notice replaced it meanwhile)."""
        at = time.time() if now is None else now
        with self._writing() as conn:
            return (
                conn.execute(
                    update(alerts)
                    .where(alerts.c.id == alert_id, alerts.c.notice == notice)
                    .values(notice="", notices=alerts.c.notices + 1, notified_at=at, notice_error=None)
                ).rowcount
                == 1
            )

    def notice_failed(self, alert_id: str, notice: str, retry_at: float, error: str) -> None:
        """The target did not take it: try again at ``retry_at``; ``error`` is PHI-free (status, exception)."""
        with self._writing() as conn:
            conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.notice == notice)
                .values(notice_due=retry_at, notice_error=error[:200])
            )

    def drop_notice(self, alert_id: str, notice: str) -> None:
        """A notice nobody can be sent it (its rule or target is no longer configured)."""
        with self._writing() as conn:
            conn.execute(update(alerts).where(alerts.c.id == alert_id, alerts.c.notice == notice).values(notice=""))
