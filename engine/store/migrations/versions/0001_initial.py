"""Initial schema: messages, contents, deliveries, attempts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("peer", sa.String(100), nullable=False),
        sa.Column("message_type", sa.String(40), nullable=False),
        sa.Column("sender", sa.String(200), nullable=False),
        sa.Column("control_id", sa.String(200), nullable=False),
        sa.Column("dedupe_key", sa.String(512), nullable=False),
        sa.Column("duplicate_of", sa.String(32), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("size_bytes", sa.Integer, nullable=False),
    )
    op.create_index("ix_messages_dedupe", "messages", ["dedupe_key"])
    op.create_index("ix_messages_status", "messages", ["status", "updated_at"])
    op.create_index("ix_messages_channel_received", "messages", ["channel", "received_at"])
    op.create_table(
        "contents",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("destination", sa.String(100), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_contents_message", "contents", ["message_id", "kind", "destination"])
    op.create_table(
        "deliveries",
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_deliveries_status", "deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "attempts",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("destination", sa.String(100), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_attempts_message", "attempts", ["message_id", "destination"])


def downgrade() -> None:
    for t in ("attempts", "deliveries", "contents", "messages"):
        op.drop_table(t)
