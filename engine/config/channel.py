"""The channel language: one YAML file per channel, validated by these models.

A channel names a source, how and when the sender is answered, which mapping turns messages into FHIR,
and where the resulting bundles go. Source and destination configs are declared by their own modules
(``engine.sources.*``, ``engine.destinations.*``) and composed here by their ``type``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.alerts.config import AlertsConfig
from engine.backpressure import BacklogOverride
from engine.config import yamlfile
from engine.config.model import Model
from engine.destinations import DestinationConfig
from engine.errors import ConfigError
from engine.events_feed import EventsConfig
from engine.sources import SourceConfig
from engine.store.retention import RetentionOverride
from engine.transform.authority import Identifiers
from engine.transform.limits import LimitsOverride


class ReplyPolicy(StrEnum):
    on_commit = "on_commit"
    after_transform = "after_transform"


class Validation(StrEnum):
    full = "full"
    sampled = "sampled"
    off = "off"


class OrderingMode(StrEnum):
    none = "none"
    per_patient = "per_patient"
    strict = "strict"


class OnDead(StrEnum):
    hold = "hold"
    skip = "skip"


class Ordering(Model):
    """In what order a channel's messages reach each destination.

    ``per_patient``: each patient's messages reach a target in arrival order (a message waits while an
    earlier one of the same patient is unprocessed, queued or retrying: head-of-line for that patient only;
    different patients go in parallel), across worker threads, processes and hosts, and across channels
    that deliver to the same system. ``strict``: the whole channel in arrival order. ``none``: as fast as
    possible. The patient is the PID-3 identifier (the MR-typed one, else the first) as sent.
    """

    mode: OrderingMode = Field(OrderingMode.per_patient, description="none, per_patient or strict.")
    on_dead: OnDead = Field(
        OnDead.hold,
        description="When an earlier message of the same patient (strict: of the channel) is dead-lettered: "
        "hold the later ones until it is replayed or discarded (interlink dlq), or skip it and go on.",
    )
    stale_writes: Literal["keep_newer", "overwrite"] = Field(
        "keep_newer",
        description="keep_newer: a resource the destination already holds from a newer message (by source "
        "time: EVN-2, else MSH-7) is not overwritten by an older one (it is only created if absent). "
        "overwrite: the last delivery wins.",
    )


class EnvCondition(Model):
    """Turn a destination on or off by whether an environment variable is set (non-empty)."""

    env_set: str | None = Field(None, description="Enabled only when this environment variable is set.")
    env_unset: str | None = Field(None, description="Enabled only when this environment variable is unset.")

    def holds(self) -> bool:
        if self.env_set is not None and not os.environ.get(self.env_set):
            return False
        return not (self.env_unset is not None and os.environ.get(self.env_unset))


class Channel(Model):
    """One channel: source → store → transform → destinations."""

    name: str = Field(description="Unique channel name (letters, digits, '-', '_').", pattern=r"^[A-Za-z0-9_-]+$")
    description: str = Field("", description="What the channel is for.")
    enabled: bool = Field(True, description="A disabled channel is checked but not started.")
    source: SourceConfig = Field(description="Where messages come from.")
    response: ReplyPolicy = Field(
        ReplyPolicy.on_commit,
        description="When the sender is answered: once the raw message is committed (on_commit), "
        "or once it has also been parsed and mapped (after_transform), so mapping errors are NAKed.",
    )
    mapping: str | None = Field(
        None, description="Message map to use (path under mappings/); default: chosen from MSH-9."
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone of HL7 times sent without an offset (FHIR needs one), e.g. Europe/Paris; "
        "default: the mapping's own, else UTC.",
    )
    validation: Validation = Field(
        Validation.sampled, description="FHIR validation of each bundle: full, sampled (1 in 100) or off."
    )
    strict: bool = Field(
        False,
        description="Check each message against its HL7 message structure for its version (MSH-12) before "
        "mapping: required segments and fields, segment order; a message that breaks it is refused (HL7 100/101).",
    )
    identifiers: Identifiers = Field(
        default_factory=Identifiers,
        description="Default assigning authority per sender (MSH-3/MSH-4) or for the channel, for identities "
        "sent without one (PID-3.4, PV1-19.4, OBR-3.2 empty); without a default such messages are refused, "
        "since a search by value alone matches other facilities' records.",
    )
    limits: LimitsOverride | None = Field(
        None,
        description="This channel's caps on one HL7 message and batch, below the engine's `limits:` (any of "
        "max_bytes, max_segments, max_repetitions, max_components, max_batch_messages); checked at the source.",
    )
    backlog: BacklogOverride | None = Field(
        None,
        description="This channel's back-pressure bounds (any of slow_at, refuse_at, slow_ms), instead of the "
        "engine's `backlog:`: past slow_at replies are delayed, at refuse_at messages are refused uncommitted.",
    )
    ordering: Ordering = Field(
        default_factory=Ordering,
        description="Delivery order per destination; `ordering: per_patient` is short for `{mode: per_patient}`.",
    )
    retention: RetentionOverride | None = Field(
        None,
        description="How long this channel's finished messages are kept (content_days, metadata_days), instead "
        "of the engine's `retention:`; unfinished and dead-lettered messages are never pruned.",
    )
    destinations: list[DestinationConfig] = Field(description="Where bundles are delivered.", min_length=1)
    events: EventsConfig | None = Field(
        None,
        description="An event feed: this channel's lifecycle events (received, error, sent, dead; ids and "
        "statuses only) POSTed in signed batches to an http destination (engine/events_feed.py).",
    )
    alerts: AlertsConfig | None = Field(
        None,
        description="Alerts (engine/alerts/): rules on the channel's flow (silence in business hours, error rate, "
        "dead letters, queue age) and critical results with escalation, POSTed signed to http targets.",
    )

    @field_validator("ordering", mode="before")
    @classmethod
    def _ordering_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Channel:
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destination names must be unique: {sorted(dupes)}")
        if not hasattr(self.source, "objects_dir"):
            for d in self.destinations:
                if getattr(d, "sends_objects", False):
                    raise ValueError(
                        f"destination {d.name} ({d.type}) sends the stored DICOM instances: only a DICOM source "
                        "stores them"
                    )
        return self

    def destination(self, name: str) -> DestinationConfig:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)


def _active_destinations(doc: yamlfile.YamlDoc) -> tuple[Any, list[int]]:
    """Drop destinations whose ``when`` does not hold (before their own fields are validated).

    Returns the data to validate and, for each kept destination, its index in the file.
    """
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("destinations"), list):
        return data, []
    kept = []
    where: list[int] = []
    for i, d in enumerate(data["destinations"]):
        if isinstance(d, dict) and "when" in d:
            cond = doc.validate(EnvCondition, d["when"], base=("destinations", i, "when"))
            if not cond.holds():
                continue
            d = {k: v for k, v in d.items() if k != "when"}
        kept.append(d)
        where.append(i)
    if not kept and data["destinations"]:
        raise doc.error("no destination is enabled (check the destinations' `when` conditions)", ("destinations",))
    return {**data, "destinations": kept}, where


#: Channel keys that describe how a source reads its messages, moved under ``source:``.
_MOVED_TO_SOURCE = ("charset", "accept", "dedupe")


def load_channel(path: str | Path) -> Channel:
    """Load and validate one channel file; errors are ``ConfigError`` with file:line."""
    doc = yamlfile.load(path)
    if not isinstance(doc.data, dict):
        raise doc.error("a channel file must be a mapping with name, source and destinations")
    for key in _MOVED_TO_SOURCE:
        if key in doc.data:
            raise doc.error(f"`{key}` belongs to the source now: move it under `source:`", (key,))
    data, where = _active_destinations(doc)
    try:
        return Channel.model_validate(data)
    except ValidationError as exc:
        # Point at the destination's place in the file, not in the filtered list.
        errors = exc.errors(include_url=False)
        for e in errors:
            loc = e["loc"]
            if len(loc) > 1 and loc[0] == "destinations" and isinstance(loc[1], int) and loc[1] < len(where):
                e["loc"] = ("destinations", where[loc[1]], *loc[2:])
        raise doc.validation_error(
            ValidationError.from_exception_data(exc.title, errors),  # type: ignore[arg-type]  # same dicts, re-located
            data=doc.data,
        ) from None


def channel_files(paths: list[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml``/``*.yml`` files, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            out.append(p)
    return out


def load_channels(paths: list[Path]) -> list[Channel]:
    """Load every channel file; all errors are collected and raised together."""
    channels: list[Channel] = []
    errors: list[str] = []
    seen: dict[str, Path] = {}
    for f in channel_files(paths):
        try:
            ch = load_channel(f)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if ch.name in seen:
            errors.append(f"{f}: channel name {ch.name!r} is already used by {seen[ch.name]}")
            continue
        seen[ch.name] = f
        channels.append(ch)
    if errors:
        raise ConfigError("\n".join(errors))
    return channels
