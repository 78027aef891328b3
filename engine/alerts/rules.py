"""Whether a channel rule's condition holds now: one cheap, indexed query per rule.

    rule          query                                                indexes PostgreSQL's plans used
    silence       max(received_at) of the channel                      ix_messages_channel_received (a quiet
                                                                       channel), ix_messages_received (a busy one)
    error_rate    messages received in the window                      ix_messages_received
                  of them in error or dead (changed in the window)     ix_messages_status + _channel_received
    dead_letters  dead deliveries of the channel's messages            ix_deliveries_changed, messages_pkey
    queue_age     min(received_at) of its received/transformed ones    ix_messages_status

``check`` returns a :class:`Condition`: ``holds`` True (raise, or keep), False (resolve) or None (not
judged now: a silence rule outside business hours keeps its alert, unless traffic came back), and a
PHI-free ``detail`` (figures only). Silence counts from the opening of the business window at the
earliest, so a quiet night does not raise an alert the moment the window opens.

Measured on PostgreSQL, 200,000 messages of 4 channels over two days (500 unfinished, 200 dead letters), one
check each on the loaded 2-core machine: silence 1.1 ms, error_rate (15 min) 2.8 ms, dead_letters 3.2 ms,
queue_age 1.8 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from engine.alerts.config import AlertRule, DeadLettersRule, ErrorRateRule, QueueAgeRule, SilenceRule
from engine.store.schema import DeliveryStatus, MessageStatus, deliveries, messages

__all__ = ["Condition", "check"]

_FAILED = (MessageStatus.error.value, MessageStatus.dead.value)
_UNFINISHED = (MessageStatus.received.value, MessageStatus.transformed.value)


@dataclass(frozen=True, slots=True)
class Condition:
    holds: bool | None
    detail: dict[str, Any] = field(default_factory=dict)


def _silence(conn: Connection, channel: str, rule: SilenceRule, now: float) -> Condition:
    last = conn.execute(select(func.max(messages.c.received_at)).where(messages.c.channel == channel)).scalar()
    quiet_s = now - last if last is not None else None
    detail = {"minutes": rule.minutes, "silent_min": None if quiet_s is None else round(quiet_s / 60, 1)}
    recent = quiet_s is not None and quiet_s < rule.minutes * 60
    opened = rule.hours.opened_at(now) if rule.hours is not None else None
    if rule.hours is not None and opened is None:
        return Condition(False if recent else None, detail)
    since = max(last or 0.0, opened or 0.0)
    return Condition(now - since >= rule.minutes * 60, detail)


def _error_rate(conn: Connection, channel: str, rule: ErrorRateRule, now: float) -> Condition:
    since = now - rule.minutes * 60
    m = messages.c
    total = conn.execute(
        select(func.count()).select_from(messages).where(m.channel == channel, m.received_at >= since)
    ).scalar_one()
    failed = conn.execute(
        select(func.count())
        .select_from(messages)
        .where(m.status.in_(_FAILED), m.updated_at >= since, m.channel == channel, m.received_at >= since)
    ).scalar_one()
    percent = 100.0 * failed / total if total else 0.0
    detail = {"messages": total, "failed": failed, "percent": round(percent, 2), "threshold": rule.percent}
    return Condition(total >= rule.min_messages and percent > rule.percent, detail)


def _dead_letters(conn: Connection, channel: str, rule: DeadLettersRule, now: float) -> Condition:
    n = conn.execute(
        select(func.count())
        .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
        .where(deliveries.c.status == DeliveryStatus.dead.value, messages.c.channel == channel)
    ).scalar_one()
    return Condition(n > rule.above, {"dead": n, "above": rule.above})


def _queue_age(conn: Connection, channel: str, rule: QueueAgeRule, now: float) -> Condition:
    m = messages.c
    # `+ 0`: with min(received_at) PostgreSQL walks ix_messages_received from the oldest message until an
    # unfinished one (93 ms at 200k messages, 500 unfinished); through ix_messages_status it takes 0.15 ms
    query = select(func.min(m.received_at + 0)).where(m.status.in_(_UNFINISHED), m.channel == channel)
    oldest = conn.execute(query).scalar()
    age = now - oldest if oldest is not None else 0.0
    return Condition(age > rule.seconds, {"oldest_s": round(age, 1), "seconds": rule.seconds})


def check(conn: Connection, channel: str, rule: AlertRule, now: float) -> Condition:
    """Whether ``rule`` holds for ``channel`` at ``now`` (epoch s)."""
    if isinstance(rule, SilenceRule):
        return _silence(conn, channel, rule, now)
    if isinstance(rule, ErrorRateRule):
        return _error_rate(conn, channel, rule, now)
    if isinstance(rule, DeadLettersRule):
        return _dead_letters(conn, channel, rule, now)
    return _queue_age(conn, channel, rule, now)
