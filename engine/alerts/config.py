"""A channel's ``alerts:``: the rules watched by the evaluator, critical results, and where notices go.

```yaml
alerts:
  targets:                       # http destinations (Standard Webhooks-signed POST, secrets from env/file)
    - {type: http, name: oncall, url: https://pager.example/hook, signing: {secret_env: ONCALL_SECRET}}
    - {type: http, name: charge-nurse, url: https://ward.example/hook}
  rules:
    - {kind: silence, minutes: 30, target: oncall,
       hours: {days: [mon, tue, wed, thu, fri], from: "07:00", to: "19:00", timezone: Europe/Paris}}
    - {kind: error_rate, percent: 5, minutes: 15, min_messages: 20, target: oncall, repeat_min: 60}
    - {kind: dead_letters, target: oncall}
    - {kind: queue_age, seconds: 300, target: oncall, cooldown_min: 10}
  critical:                      # ORU results: HH / LL / AA, or a rule on a code and its value
    target: oncall
    escalate_to: charge-nurse
    escalate_after_min: 15
    rules: [{name: potassium-high, system: http://loinc.org, code: 2823-3, comparator: ">=", value: 6.5}]
```

Every name a rule gives as ``target`` / ``escalate_to`` must be one of ``targets``; a rule's ``name``
(default: its kind) is unique in the channel and names the alert.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from engine.config.model import Model
from engine.destinations.http import HttpConfig

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessHours(Model):
    """When a channel is expected to carry traffic: on these days, from ``from`` to ``to`` local time.

    A window whose ``to`` is earlier than its ``from`` runs overnight; its day is the day it opens."""

    days: list[Weekday] = Field(
        default_factory=lambda: list(_DAYS[:5]), min_length=1, description="Days the window opens (mon … sun)."
    )
    start: time = Field(time(8, 0), alias="from", description='Local time the window opens, e.g. "08:00".')
    end: time = Field(time(18, 0), alias="to", description='Local time the window closes, e.g. "18:00".')
    timezone: str = Field("UTC", description="IANA time zone of from/to, e.g. Europe/Paris.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def opened_at(self, at: float) -> float | None:
        """When the window holding ``at`` (epoch s) opened, or None outside business hours."""
        zone = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(at, zone)
        for day in (local.date(), local.date() - timedelta(days=1)):
            if _DAYS[day.weekday()] not in self.days:
                continue
            opens = datetime.combine(day, self.start, zone)
            closes = datetime.combine(day + timedelta(days=1) if self.end <= self.start else day, self.end, zone)
            if opens <= local < closes:
                return opens.timestamp()
        return None


class RuleBase(Model):
    name: str | None = Field(
        None, description="Name of the rule and of its alerts, unique in the channel (default: its kind)."
    )
    target: str = Field(description="Where its notices go: the name of one of `alerts.targets`.")
    repeat_min: float | None = Field(
        None, gt=0, description="While open and not acknowledged, notify again every N minutes (default: once)."
    )
    cooldown_min: float = Field(
        0, ge=0, description="After it resolves, the rule does not raise again for N minutes (flapping)."
    )

    @property
    def rule_name(self) -> str:
        return self.name or str(getattr(self, "kind", ""))


class SilenceRule(RuleBase):
    """No message received for ``minutes`` (counted from the opening of business hours at the earliest)."""

    kind: Literal["silence"] = Field(description="Rule kind.")
    minutes: float = Field(gt=0, description="Minutes without a message that raise the alert.")
    hours: BusinessHours | None = Field(None, description="Only within these business hours (default: at any time).")


class ErrorRateRule(RuleBase):
    """More than ``percent`` of the messages received in the last ``minutes`` ended in error or dead."""

    kind: Literal["error_rate"] = Field(description="Rule kind.")
    percent: float = Field(gt=0, le=100, description="Share of messages in error or dead (%) above which it raises.")
    minutes: float = Field(15, gt=0, description="The window looked at: messages received in the last N minutes.")
    min_messages: int = Field(10, ge=1, description="Fewer messages than this in the window never raise it.")


class DeadLettersRule(RuleBase):
    """Dead letters (deliveries given up, neither replayed nor discarded) of the channel above ``above``."""

    kind: Literal["dead_letters"] = Field(description="Rule kind.")
    above: int = Field(0, ge=0, description="Raised when the channel has more dead letters than this.")


class QueueAgeRule(RuleBase):
    """The oldest unfinished message (received or transformed, not yet sent) is older than ``seconds``."""

    kind: Literal["queue_age"] = Field(description="Rule kind.")
    seconds: float = Field(gt=0, description="Age (s) of the oldest unfinished message that raises the alert.")


AlertRule = Annotated[
    Union[SilenceRule, ErrorRateRule, DeadLettersRule, QueueAgeRule],  # noqa: UP007
    Field(discriminator="kind"),
]

Comparator = Literal["<", "<=", ">", ">=", "="]


class CriticalRule(Model):
    """A result that is critical by its code (and value), whatever its interpretation flag."""

    name: str = Field(description="Name of the rule, shown in the alert.", pattern=r"^[A-Za-z0-9_.-]+$")
    system: str = Field(description="Code system of Observation.code, e.g. http://loinc.org.")
    code: str = Field(description="Code in that system, e.g. 2823-3.")
    comparator: Comparator | None = Field(
        None, description="How valueQuantity.value compares to `value` (none: every result of this code)."
    )
    value: float | None = Field(None, description="The threshold compared to.")

    @model_validator(mode="after")
    def _both(self) -> CriticalRule:
        if (self.comparator is None) != (self.value is None):
            raise ValueError("give comparator and value together")
        return self


class CriticalConfig(Model):
    """Critical results: an Observation of the mapped bundle flagged critical raises an alert."""

    interpretations: list[str] = Field(
        default_factory=lambda: ["HH", "LL", "AA"],
        description="Observation.interpretation codes (v3-ObservationInterpretation; OBX-8) that are critical.",
    )
    rules: list[CriticalRule] = Field(default_factory=list, description="Further results critical by code/value.")
    target: str = Field(description="Who is told first: the name of one of `alerts.targets`.")
    escalate_to: str | None = Field(
        None, description="Who is told when nobody acknowledged it in time (a name of `alerts.targets`)."
    )
    escalate_after_min: float = Field(15, gt=0, description="Minutes without acknowledgement before escalating.")


class AlertsConfig(Model):
    """A channel's alerts (engine/alerts/): rules on its flow, critical results, and the targets told."""

    targets: list[HttpConfig] = Field(
        min_length=1,
        description="Where notices are POSTed: http destinations (url, signing, timeout_s, headers, auth); their "
        "`retry` sets the backoff only: a notice is retried until taken.",
    )
    rules: list[AlertRule] = Field(
        default_factory=list, description="Rules on the channel's flow: silence, error_rate, dead_letters, queue_age."
    )
    critical: CriticalConfig | None = Field(None, description="Critical results and their escalation.")
    interval_s: float = Field(5, gt=0, description="How often the rules are checked and notices sent (s).")

    @model_validator(mode="after")
    def _names(self) -> AlertsConfig:
        targets = [t.name for t in self.targets]
        if len(set(targets)) != len(targets):
            raise ValueError("alert target names must be unique")
        rules = [r.rule_name for r in self.rules]
        if len(set(rules)) != len(rules):
            raise ValueError("alert rule names must be unique (give `name:` to two rules of one kind)")
        wanted = [r.target for r in self.rules]
        if self.critical is not None:
            wanted += [self.critical.target, *([self.critical.escalate_to] if self.critical.escalate_to else [])]
        unknown = sorted({w for w in wanted if w not in targets})
        if unknown:
            raise ValueError(f"unknown alert target(s) {unknown}: name one of alerts.targets {targets}")
        return self

    def rule(self, name: str) -> AlertRule | None:
        return next((r for r in self.rules if r.rule_name == name), None)
