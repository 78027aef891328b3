"""Tables of the message store (SQLAlchemy Core). Alembic migrations create them; this is their shape.

messages    one row per inbound message, with its status (see MessageStatus)
contents    content by kind: raw, transformed, sent, response, error (Mirth's donkey idea)
deliveries  one row per (message, destination), with its status (see DeliveryStatus)
attempts    one row per delivery attempt: outcome, HTTP status, error, duration
writes      per target system and resource, the newest source time written there (stale-write guard)
install     per-installation values (the key of the keyed hashes in non-content columns)
feed_cursors  per channel with an event feed, how far the feed has delivered (engine/events_feed.py)
api_tokens  admin API tokens: role and a hash of the secret (migration 0007)
audit       append-only trail of content reads and actions through the admin API and CLI (0007; triggers
            refuse UPDATE and DELETE: 0010)
message_keys  keyed hashes of what a message is searched by (MRN, accession number) (0007)
alerts      channel-rule and critical-result alerts, their state and notification outbox (0008)
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()


class MessageStatus(StrEnum):
    received = "received"  # committed, not yet transformed
    duplicate = "duplicate"  # same MSH-10 from the same sender inside the window: kept, not processed
    error = "error"  # unreadable or rejected by the mapping: kept with its error, nothing delivered
    filtered = "filtered"  # nothing to deliver
    transformed = "transformed"  # bundle stored, deliveries queued
    sent = "sent"  # every destination took it
    dead = "dead"  # at least one destination gave up (dead letter)
    held = "held"  # a member of a group (a DICOM instance of a study): waits for its group, never processed alone
    grouped = "grouped"  # a member whose group was assembled into a message of its own (which is processed)


FINAL_MESSAGE_STATUSES = frozenset(
    {
        MessageStatus.duplicate,
        MessageStatus.error,
        MessageStatus.filtered,
        MessageStatus.sent,
        MessageStatus.dead,
        MessageStatus.grouped,
    }
)


class DeliveryStatus(StrEnum):
    pending = "pending"  # queued, no attempt yet
    waiting = "waiting"  # held behind an earlier message of its ordering lane (same patient, same target)
    retrying = "retrying"  # failed with a retryable outcome; next attempt scheduled
    sent = "sent"
    dead = "dead"  # permanent failure or retries exhausted: replayable by an operator
    discarded = "discarded"  # an operator gave up on a dead letter: final, releases its lane


#: Deliveries still to be made (the sweeper and the ordering gate look at these).
OPEN_DELIVERY_STATUSES = (DeliveryStatus.pending, DeliveryStatus.waiting, DeliveryStatus.retrying)


class ContentKind(StrEnum):
    raw = "raw"
    transformed = "transformed"
    sent = "sent"
    response = "response"
    error = "error"


messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("channel", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", Float, nullable=False),  # epoch seconds
    Column("updated_at", Float, nullable=False),
    Column("peer", String(100), nullable=False, default=""),
    Column("message_type", String(40), nullable=False, default=""),
    Column("sender", String(200), nullable=False, default=""),  # MSH-3|MSH-4
    Column("control_id", String(200), nullable=False, default=""),  # MSH-10
    # channel, sender and control id in one indexed column: one equality lookup finds earlier copies,
    # whatever the planner knows about the table (a three-column index was scanned by prefix only)
    Column("dedupe_key", String(512), nullable=False, default=""),
    Column("duplicate_of", String(32), nullable=True),
    Column("error", Text, nullable=True),  # PHI-free reason
    Column("size_bytes", Integer, nullable=False, default=0),
    # ordering lane ('' = unordered) and the event's time at the source (EVN-2, else MSH-7; epoch s)
    # what the message is (hl7v2, dicom, json, fhir) and the text encoding its source resolved ('' = binary)
    Column("kind", String(16), nullable=False, default="hl7v2", server_default="hl7v2"),
    Column("charset", String(40), nullable=False, default="", server_default=""),
    Column("lane", String(40), nullable=False, default="", server_default=""),
    Column("source_time", Float, nullable=True),
    # the group a member belongs to (keyed hash of e.g. the Study Instance UID; '' = none): migration 0005
    Column("group_key", String(24), nullable=False, default="", server_default=""),
    Index("ix_messages_dedupe", "dedupe_key"),
    Index("ix_messages_lane", "lane", "status", "id"),
    Index("ix_messages_status", "status", "updated_at"),
    Index("ix_messages_channel_received", "channel", "received_at"),
    Index("ix_messages_group", "channel", "group_key", "status"),
    Index("ix_messages_control_id", "control_id", "received_at"),
    Index("ix_messages_received", "received_at"),
)

contents = Table(
    "contents",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("destination", String(100), nullable=False, default=""),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    # how data is encoded: 0 as is, 1 a zstd frame, 2 one compressed against the message's bundle
    # (engine/store/codec.py; migration 0009)
    Column("codec", SmallInteger, nullable=False, default=0, server_default="0"),
    Index("ix_contents_message", "message_id", "kind", "destination"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("destination", String(100), primary_key=True),
    Column("target", String(16), nullable=False, default="", server_default=""),  # hash of the system written to
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_deliveries_status", "status", "next_attempt_at"),
    Index("ix_deliveries_changed", "status", "updated_at"),  # the event feed: sent/dead since t (0006)
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("destination", String(100), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_attempts_message", "message_id", "destination"),
)

writes = Table(
    "writes",
    metadata,
    Column("target", String(16), primary_key=True),
    Column("resource", String(64), primary_key=True),  # the entry's deterministic fullUrl (no PHI)
    Column("source_time", Float, nullable=False),
    Column("message_id", String(32), nullable=False),
    Column("updated_at", Float, nullable=False),
)

install = Table(
    "install",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

feed_cursors = Table(
    "feed_cursors",
    metadata,
    Column("channel", String(100), primary_key=True),
    Column("cursor", Text, nullable=False),  # JSON: the positions delivered up to (engine/events_feed.py)
    Column("updated_at", Float, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),  # viewer | operator | admin
    Column("secret_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the secret
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("token_id", String(16), nullable=False),  # '' = the local CLI
    Column("actor", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(60), nullable=False),  # e.g. message.read, deadletter.replay, channel.stop
    Column("target", String(200), nullable=False, server_default=""),  # channel, destination or filter
    Column("message_ids", Text, nullable=False, server_default=""),  # space-separated ids, no content
    Column("peer", String(100), nullable=False, server_default=""),  # client address
    Column("outcome", String(16), nullable=False, server_default="ok"),
    Index("ix_audit_at", "at"),
)


class KeyKind(StrEnum):
    mrn = "mrn"  # a patient identifier (PID-3, Patient.identifier)
    accession = "accession"  # an order's accession / filler number


message_keys = Table(
    "message_keys",
    metadata,
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", String(24), nullable=False),  # Store.pseudonym(value): never the value itself
    PrimaryKeyConstraint("message_id", "kind", "value"),
    Index("ix_message_keys_value", "kind", "value", "message_id"),
)


class AlertState(StrEnum):
    open = "open"  # raised, not yet acknowledged
    acknowledged = "acknowledged"  # an operator took it (no reminder, no escalation)
    escalated = "escalated"  # not acknowledged in time: the escalation target was told
    resolved = "resolved"  # the condition cleared (channel rules): final


#: Alerts someone still has to look at (listed first, reminded, escalated).
ACTIVE_ALERT_STATES = (AlertState.open, AlertState.acknowledged, AlertState.escalated)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("channel", String(100), nullable=False),
    Column("kind", String(16), nullable=False),  # silence | error_rate | dead_letters | queue_age | critical
    Column("rule", String(100), nullable=False),
    Column("dedupe", String(64), nullable=False),  # one condition, one alert (engine/alerts/state.py)
    Column("state", String(16), nullable=False),
    Column("raised_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("acked_at", Float, nullable=True),
    Column("acked_by", String(100), nullable=False, server_default=""),
    Column("escalated_at", Float, nullable=True),
    Column("resolved_at", Float, nullable=True),
    Column("message_id", String(32), nullable=True),
    Column("detail", Text, nullable=False, server_default="{}"),  # JSON: codes, ids, figures; never PHI
    Column("notice", String(16), nullable=False, server_default=""),  # notification to send ('' none)
    Column("notice_due", Float, nullable=True),
    Column("notices", Integer, nullable=False, server_default="0"),
    Column("notified_at", Float, nullable=True),
    Column("notice_error", String(200), nullable=True),
    Index("ux_alerts_dedupe", "dedupe", unique=True),
    Index("ix_alerts_state", "state", "raised_at"),
    Index("ix_alerts_notice", "notice", "notice_due"),
    Index("ix_alerts_channel", "channel", "raised_at"),
)
