"""Alerts (engine/alerts/): channel rule alerts and critical-result alerts, with their notification state.

``alerts`` holds one row per alert: which channel and rule raised it (``kind``: silence, error_rate,
dead_letters, queue_age, critical), its state (open, acknowledged, escalated, resolved), when it was
raised, acknowledged (and by whom: a token name), escalated and resolved, the message of a critical result,
and a PHI-free ``detail`` (JSON: codes, ids and measured figures, never a value from a message).
``dedupe`` makes one condition one alert: a rule's active alert holds a hash of (channel, rule) until it
resolves, a critical result a hash of (message id, observation fullUrl), so a second evaluator or a
re-processed message cannot raise it twice. ``notice`` is the notification still to send (raised,
reminder, escalated, resolved; '' none) and ``notice_due`` when to try it: the notifier's outbox.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("dedupe", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("raised_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("acked_at", sa.Float, nullable=True),
        sa.Column("acked_by", sa.String(100), nullable=False, server_default=""),
        sa.Column("escalated_at", sa.Float, nullable=True),
        sa.Column("resolved_at", sa.Float, nullable=True),
        sa.Column("message_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.Column("notice", sa.String(16), nullable=False, server_default=""),
        sa.Column("notice_due", sa.Float, nullable=True),
        sa.Column("notices", sa.Integer, nullable=False, server_default="0"),
        sa.Column("notified_at", sa.Float, nullable=True),
        sa.Column("notice_error", sa.String(200), nullable=True),
    )
    op.create_index("ux_alerts_dedupe", "alerts", ["dedupe"], unique=True)
    op.create_index("ix_alerts_state", "alerts", ["state", "raised_at"])
    op.create_index("ix_alerts_notice", "alerts", ["notice", "notice_due"])
    op.create_index("ix_alerts_channel", "alerts", ["channel", "raised_at"])


def downgrade() -> None:
    op.drop_table("alerts")
