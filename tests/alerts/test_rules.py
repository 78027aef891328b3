"""Channel rules against a real SQLite store and a real HTTP receiver, with the evaluator's clock moved by
the test: each rule raises one alert however often it is checked, notifies once (signed), and resolves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from engine.alerts.book import AlertBook
from engine.alerts.config import BusinessHours
from engine.alerts.evaluator import Evaluator
from engine.store import Store
from engine.store.repository import NewMessage
from engine.store.schema import deliveries, messages
from tests.alerts.receiver import SECRET, SECRET_ENV, Receiver, channel

T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC).timestamp()  # a Wednesday, 10:00 UTC


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def receive(store: Store, at: float, status: str = "received", channel_name: str = "lab") -> str:
    m = NewMessage(channel_name, b"MSH|^~\\&|SECRET-CONTENT")
    store.insert_messages([m])
    with store.work.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == m.id).values(received_at=at, updated_at=at, status=status))
    return m.id


def evaluator(store: Store, tmp: Path, receiver: Receiver, clock: Clock, **alerts: Any) -> Evaluator:
    return Evaluator(store, [channel(tmp, receiver.url, alerts)], clock=clock)


def events(receiver: Receiver) -> list[tuple[str, str, str]]:
    return [(n["notice"], n["alert"]["rule"], n["alert"]["state"]) for n in receiver.notices()]


def test_silence_raises_once_then_resolves_when_traffic_returns(
    store: Store, tmp_path: Path, receiver: Receiver
) -> None:
    clock = Clock(T0)
    ev = evaluator(store, tmp_path, receiver, clock, rules=[{"kind": "silence", "minutes": 10, "target": "first"}])
    receive(store, T0)
    clock.now = T0 + 9 * 60
    ev.step()
    assert receiver.requests == []
    clock.now = T0 + 11 * 60
    assert ev.step() == 1
    for _ in range(3):  # checked again and again: still one alert, one notice
        clock.now += 30
        assert ev.step() == 0
    alerts = AlertBook(store).listing()
    assert [(a.kind, a.state) for a in alerts] == [("silence", "open")]
    receive(store, clock.now)
    ev.step()
    assert events(receiver) == [("raised", "silence", "open"), ("resolved", "silence", "resolved")]
    assert receiver.requests[0][0] == "/first"
    assert [a.state for a in AlertBook(store).listing()] == ["resolved"]


def test_silence_counts_only_within_business_hours(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    hours = {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00", "timezone": "UTC"}
    clock = Clock(T0 - 16 * 3600)  # Tuesday 18:00: last message, window closing
    rule = {"kind": "silence", "minutes": 30, "hours": hours, "target": "first"}
    ev = evaluator(store, tmp_path, receiver, clock, rules=[rule])
    receive(store, clock.now)
    for hour in (20, 23, 27, 31.9):  # the night: silent for hours, but out of business hours
        clock.now = T0 - 16 * 3600 + (hour - 18) * 3600
        ev.step()
    assert receiver.requests == []
    clock.now = T0 - 2 * 3600 + 20 * 60  # Wednesday 08:20: 20 minutes into the window
    ev.step()
    assert receiver.requests == []
    clock.now = T0 - 2 * 3600 + 31 * 60  # 08:31
    ev.step()
    assert events(receiver) == [("raised", "silence", "open")]


def test_business_hours_window() -> None:
    day = BusinessHours.model_validate({"days": ["wed"], "from": "08:00", "to": "18:00", "timezone": "Europe/Paris"})
    assert day.opened_at(T0) == datetime(2026, 3, 4, 7, 0, tzinfo=UTC).timestamp()  # 11:00 Paris, opened 08:00
    assert day.opened_at(T0 + 8 * 3600) is None  # 19:00 Paris
    assert day.opened_at(T0 + 86400) is None  # Thursday
    night = BusinessHours.model_validate({"days": ["tue"], "from": "22:00", "to": "06:00"})
    assert night.opened_at(T0 - 6 * 3600) == datetime(2026, 3, 3, 22, 0, tzinfo=UTC).timestamp()  # Wed 04:00
    assert night.opened_at(T0) is None


def test_error_rate(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock(T0)
    rule = {"kind": "error_rate", "percent": 25, "minutes": 10, "min_messages": 4, "target": "first"}
    ev = evaluator(store, tmp_path, receiver, clock, rules=[rule])
    for status in ("sent", "sent", "sent"):
        receive(store, T0 - 60, status)
    receive(store, T0 - 50, "error")
    ev.step()  # 1 of 4 = 25 %: not over
    assert receiver.requests == []
    receive(store, T0 - 40, "dead")
    ev.step()  # 2 of 5 = 40 %
    ev.step()
    [raised] = receiver.notices()
    assert raised["alert"]["detail"] == {"messages": 5, "failed": 2, "percent": 40.0, "threshold": 25.0}
    clock.now = T0 + 11 * 60  # the window moved past them: too few messages to judge → resolved
    ev.step()
    assert events(receiver) == [("raised", "error_rate", "open"), ("resolved", "error_rate", "resolved")]


def test_dead_letters(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock(T0)
    ev = evaluator(store, tmp_path, receiver, clock, rules=[{"kind": "dead_letters", "target": "first"}])
    mid = receive(store, T0 - 60, "dead")
    receive(store, T0 - 60, "dead", channel_name="other")  # another channel's dead letter: not this rule's
    ev.step()
    assert receiver.requests == []
    with store.work.begin() as conn:
        conn.execute(insert(deliveries).values(message_id=mid, destination="ehr", status="dead", attempts=3,
                                               next_attempt_at=T0, updated_at=T0))  # fmt: skip
    ev.step()
    ev.step()
    with store.work.begin() as conn:  # an operator discarded it
        conn.execute(update(deliveries).where(deliveries.c.message_id == mid).values(status="discarded"))
    ev.step()
    assert events(receiver) == [("raised", "dead_letters", "open"), ("resolved", "dead_letters", "resolved")]
    assert receiver.notices()[0]["alert"]["detail"] == {"dead": 1, "above": 0}


def test_queue_age_with_cooldown_and_reminder(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock(T0)
    rule = {"kind": "queue_age", "seconds": 300, "target": "first", "repeat_min": 10, "cooldown_min": 30}
    ev = evaluator(store, tmp_path, receiver, clock, rules=[rule])
    mid = receive(store, T0 - 200)
    ev.step()
    assert receiver.requests == []
    clock.now = T0 + 120  # oldest unfinished is 320 s old
    ev.step()
    clock.now += 5 * 60
    ev.step()  # 5 minutes later: no reminder yet
    clock.now += 6 * 60
    ev.step()  # 11 minutes after the notice: one reminder
    ev.step()
    with store.work.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == mid).values(status="sent"))
    ev.step()
    receive(store, clock.now - 400)  # stuck again at once: within the cool-down, not raised again
    ev.step()
    assert events(receiver) == [
        ("raised", "queue_age", "open"),
        ("reminder", "queue_age", "open"),
        ("resolved", "queue_age", "resolved"),
    ]
    clock.now += 31 * 60
    ev.step()
    assert events(receiver)[-1] == ("raised", "queue_age", "open")
    assert len(AlertBook(store).listing()) == 2


def test_acknowledged_alert_gets_no_reminder(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock(T0)
    rule = {"kind": "queue_age", "seconds": 60, "target": "first", "repeat_min": 1}
    ev = evaluator(store, tmp_path, receiver, clock, rules=[rule])
    receive(store, T0 - 120)
    ev.step()
    [alert] = AlertBook(store).listing()
    assert AlertBook(store).acknowledge(alert.id, "night-operator", T0 + 1).state == "acknowledged"
    assert [a.id for a in AlertBook(store).listing(state="active")] == [alert.id]  # still holds: still active
    assert AlertBook(store).count_active() == 1
    clock.now += 10 * 60
    ev.step()
    assert events(receiver) == [("raised", "queue_age", "open")]


def test_a_refused_notice_is_retried_not_lost(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [503, 400]
    clock = Clock(T0)
    ev = evaluator(store, tmp_path, receiver, clock, rules=[{"kind": "dead_letters", "target": "first", "above": 0}])
    mid = receive(store, T0, "dead")
    with store.work.begin() as conn:
        conn.execute(insert(deliveries).values(message_id=mid, destination="ehr", status="dead", attempts=3,
                                               next_attempt_at=T0, updated_at=T0))  # fmt: skip
    assert ev.step() == 0  # 503
    assert ev.step() == 0  # not due yet (backoff 0.5-1 s)
    clock.now += 2
    assert ev.step() == 0  # 400
    clock.now += 5
    assert ev.step() == 1
    ids = [h["webhook-id"] for _, h, _ in receiver.requests]
    assert len(ids) == 3 and len(set(ids)) == 1  # one notice, the same webhook-id on every retry


def test_an_unreachable_target_is_logged_without_content(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock = Clock(T0)
    ch = channel(tmp_path, "http://127.0.0.1:9", {"rules": [{"kind": "queue_age", "seconds": 1, "target": "first"}]})
    ev = Evaluator(store, [ch], clock=clock)
    receive(store, T0 - 60)
    with caplog.at_level("DEBUG"):
        ev.step()
    assert "raised" in caplog.text and "not taken" in caplog.text
    assert "SECRET-CONTENT" not in caplog.text
    ev.stop()


def test_an_alert_whose_rule_was_removed_is_resolved(store: Store, tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock(T0)
    ev = evaluator(store, tmp_path, receiver, clock, rules=[{"kind": "queue_age", "seconds": 60, "target": "first"}])
    receive(store, T0 - 120)
    ev.step()
    ev.use([channel(tmp_path, receiver.url, {"rules": [{"kind": "dead_letters", "target": "first"}]})])  # a reload
    ev.step()
    assert [(a.rule, a.state) for a in AlertBook(store).listing()] == [("queue_age", "resolved")]
    assert events(receiver) == [("raised", "queue_age", "open")]  # its target is gone with its rule: nobody to tell
