"""The alert evaluator: a thread of ``interlink run`` that checks each channel's rules, escalates critical
results nobody acknowledged, and sends the notices due.

Every ``interval_s`` (the smallest of the channels' ``alerts.interval_s``), :meth:`Evaluator.step`:

0. at start and after a reload, an active alert whose rule is no longer configured is resolved;
1. **rules** — for each rule of each channel, ``rules.check`` (one indexed query). A condition that holds
   with no active alert raises one (unless the rule resolved less than ``cooldown_min`` ago); one that no
   longer holds resolves the active alert; an open alert not acknowledged and last notified
   ``repeat_min`` ago gets a reminder. One condition is one alert however often it is checked.
2. **escalation** — critical alerts still ``open`` ``escalate_after_min`` after they were raised become
   ``escalated``, and the channel's ``critical.escalate_to`` target is told. Acknowledged: never.
3. **notices** — what the outbox holds (``AlertBook.due``) is POSTed to its target, an ``http`` destination
   (Standard Webhooks signature; ``webhook-id`` ``msg_<alert id>-<notice>-<n>``, the same on every retry of
   one notice). A target that refuses or is down is retried with its ``retry`` backoff, never given up.

The notice (JSON) is::

    {"type": "interlink.alert", "notice": "raised" | "reminder" | "escalated" | "resolved",
     "alert": {"id", "channel", "kind", "rule", "state", "raised_at", "acked_at", "acked_by",
               "escalated_at", "resolved_at", "message_id", "detail"},      # times ISO 8601 UTC
     "result": {"observation": {…}, "patient": {"identifier": […], "name": […]}}   # critical only

``detail`` holds figures (rates, counts, ages) or, for a critical result, the Observation's fullUrl,
interpretation code or rule name and codes. ``result`` is the only clinical content: the critical
Observation as mapped (code, value, unit, interpretation, reference range, times, identifiers) and the
identifiers and name of its subject Patient, read from the stored bundle when the notice is sent, so
the clinician told can act on it. It goes to the configured target only: the log names alert ids,
channels, rules and HTTP statuses, never a value.

Every ``interlink run`` process runs one. Two of them never raise one condition twice (the dedupe key), but
may both send one notice (the same ``webhook-id``: receivers deduplicate by it). The clock is injectable
(``clock``), so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from engine.alerts.book import AlertBook, NewAlert, dedupe_key
from engine.alerts.config import AlertsConfig
from engine.alerts.rules import check
from engine.destinations.base import Outcome
from engine.destinations.http import HttpDestination
from engine.errors import ConfigError
from engine.store import ContentKind, MessageStatus, Store
from engine.store.schema import AlertState

if TYPE_CHECKING:
    from engine.config.channel import Channel

__all__ = ["Evaluator", "alert_json", "result_of"]

log = logging.getLogger(__name__)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_json(row: Any) -> dict[str, Any]:
    """An alert row as the API and notices show it (ids, codes, figures and times; no message content)."""
    return {
        "id": row.id,
        "channel": row.channel,
        "kind": row.kind,
        "rule": row.rule,
        "state": row.state,
        "raised_at": _iso(row.raised_at),
        "acked_at": _iso(row.acked_at),
        "acked_by": row.acked_by or None,
        "escalated_at": _iso(row.escalated_at),
        "resolved_at": _iso(row.resolved_at),
        "message_id": row.message_id,
        "detail": orjson.loads(row.detail or "{}"),
    }


def result_of(bundle: bytes | None, full_url: str) -> dict[str, Any] | None:
    """The critical Observation of a stored bundle and its subject's identifiers and name."""
    if not bundle or not full_url:
        return None
    entries = orjson.loads(bundle).get("entry") or []
    by_url = {e.get("fullUrl"): e.get("resource") for e in entries if isinstance(e, dict)}
    observation = by_url.get(full_url)
    if not isinstance(observation, dict):
        return None
    subject = observation.get("subject")
    patient = by_url.get(subject.get("reference")) if isinstance(subject, dict) else None
    who = {k: patient[k] for k in ("identifier", "name") if k in patient} if isinstance(patient, dict) else {}
    return {"observation": observation, "patient": who}


class Evaluator:
    """Checks the alert rules of ``channels``, escalates and notifies (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        channels: list[Channel],
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.book = AlertBook(store)
        self.clock = clock
        self._transport = transport
        self.configs: dict[str, AlertsConfig] = {}
        #: (channel, target name) → its http destination (one pooled client each)
        self.targets: dict[tuple[str, str], HttpDestination] = {}
        self._retired: list[HttpDestination] = []
        self.interval_s = 5.0
        self._failures: dict[tuple[str, str], int] = {}  # (alert id, notice) → failed attempts, for the backoff
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and use(): the next pass starts now
        self._thread: threading.Thread | None = None
        self.use(channels)

    def use(self, channels: list[Channel]) -> None:
        """Take the channels' (new) alert settings: at start and after a reload. Targets it replaces are closed
        when the evaluator stops (a notice may be in flight through one)."""
        configs = {c.name: c.alerts for c in channels if c.enabled and c.alerts}
        targets: dict[tuple[str, str], HttpDestination] = {}
        for name, cfg in configs.items():
            for t in cfg.targets:
                try:
                    targets[(name, t.name)] = HttpDestination(t, transport=self._transport)
                except ConfigError as exc:  # a signing secret that cannot be found
                    for dest in targets.values():
                        dest.close()
                    raise ConfigError(f"channel {name}: alerts.targets {t.name}: {exc}") from None
        self._retired.extend(self.targets.values())
        self.configs, self.targets = configs, targets
        self.interval_s = min((c.interval_s for c in configs.values()), default=5.0)
        self._orphans_checked = False
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="interlink-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for dest in [*self.targets.values(), *self._retired]:
            dest.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the store is down or busy: try again next time, never die
                log.warning("alerts: check failed (%s); will try again", type(exc).__name__)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def step(self) -> int:
        """One pass: rules, escalations, notices. Returns the notices sent."""
        now = self.clock()
        if not self._orphans_checked:
            self._resolve_orphans(now)
        for channel, config in list(self.configs.items()):
            self._rules(channel, config, now)
            critical = config.critical
            if critical is not None and critical.escalate_to:
                n = self.book.escalate(channel, now - critical.escalate_after_min * 60, now)
                if n:
                    log.warning("alerts: %d critical result alert(s) of channel %s escalated", n, channel)
        return self.notify(now)

    def _resolve_orphans(self, now: float) -> None:
        """At start and after a reload: an active alert of a rule no longer configured (its channel or rule
        removed or renamed) would never be judged again; it is resolved."""
        for row in self.book.active_rule_alerts():
            config = self.configs.get(row.channel)
            if (config is None or config.rule(row.rule) is None) and self.book.resolve(row.id, now):
                log.info("alert %s resolved: its rule (channel %s, %s) is no longer configured", row.id, row.channel,
                         row.rule)  # fmt: skip
        self._orphans_checked = True

    def _rules(self, channel: str, config: AlertsConfig, now: float) -> None:
        for rule in config.rules:
            name = rule.rule_name
            with self.store.work.connect() as conn:
                condition = check(conn, channel, rule, now)
            active = self.book.active(channel, name)
            if condition.holds and active is None:
                resolved = self.book.last_resolved(channel, name)
                if resolved is not None and now - resolved < rule.cooldown_min * 60:
                    continue
                new = NewAlert(channel, rule.kind, name, dedupe_key("rule", channel, name), condition.detail)
                for alert_id, _ in self.book.raise_alerts([new], now):
                    log.warning("alert %s raised (channel %s, rule %s)", alert_id, channel, name)
            elif condition.holds is False and active is not None:
                if self.book.resolve(active.id, now):
                    log.info("alert %s resolved (channel %s, rule %s)", active.id, channel, name)
            elif (
                condition.holds
                and active is not None
                and rule.repeat_min is not None
                and active.state == AlertState.open
                and active.notified_at is not None
            ):
                self.book.remind(active.id, now - rule.repeat_min * 60, now)

    # -- notices ---------------------------------------------------------------------------------------

    def _target(self, row: Any) -> str | None:
        config = self.configs.get(row.channel)
        if config is None:
            return None
        if row.kind == "critical":
            if config.critical is None:
                return None
            return config.critical.escalate_to if row.notice == "escalated" else config.critical.target
        rule = config.rule(row.rule)
        return rule.target if rule is not None else None

    def notify(self, now: float) -> int:
        """Send every notice due; returns how many were taken."""
        sent = 0
        for row in self.book.due(now):
            target = self._target(row)
            dest = self.targets.get((row.channel, target)) if target else None
            if dest is None:
                log.warning("alerts: alert %s has no configured target now; notice %s dropped", row.id, row.notice)
                self.book.drop_notice(row.id, row.notice)
                continue
            payload: dict[str, Any] = {"type": "interlink.alert", "notice": row.notice, "alert": alert_json(row)}
            if row.kind == "critical" and row.message_id:
                bundle = self.store.content(row.message_id, ContentKind.transformed)
                message = self.store.message(row.message_id) if bundle is None else None
                if message is not None and message.status == MessageStatus.received:
                    # raised before its message's claim committed (critical.py): the result is not stored yet
                    self.book.notice_failed(row.id, row.notice, now + 1, "result not stored yet")
                    continue
                detail = orjson.loads(row.detail or "{}")
                payload["result"] = result_of(bundle, str(detail.get("observation", "")))
            result = dest.send(payload, message_id=f"{row.id}-{row.notice}-{row.notices}")
            key = (row.id, row.notice)
            if result.outcome is Outcome.SENT:
                self.book.notified(row.id, row.notice, now)
                self._failures.pop(key, None)
                sent += 1
                log.info("alert %s: %s notice sent to %s", row.id, row.notice, target)
                continue
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            config = self.configs[row.channel]
            policy = next(t.retry for t in config.targets if t.name == target)
            delay_s = policy.delay_ms(min(failures, policy.max_attempts), result.retry_after_s) / 1000
            why = f"HTTP {result.status_code}" if result.status_code else str(result.outcome.value)
            self.book.notice_failed(row.id, row.notice, now + delay_s, why)
            log.warning("alert %s: %s notice not taken by %s (%s); retrying in %.0f s", row.id, row.notice,
                        target, why, delay_s)  # fmt: skip
        return sent
