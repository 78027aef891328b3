"""The event feed (``engine.events_feed``): where each channel's feed has read up to, and an index that
finds the deliveries that changed to sent or dead since then.

``feed_cursors`` holds one row per channel with a feed: the positions (message id, change time) it has
delivered up to, written only after the receiver took the batch, so a restart resumes where the feed
stopped (at-least-once: a batch taken but not recorded is sent again, with the same event ids).
``ix_deliveries_changed`` (status, updated_at) lets the feed read "sent or dead since t" without scanning
every delivery ever made.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_cursors",
        sa.Column("channel", sa.String(100), primary_key=True),
        sa.Column("cursor", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_deliveries_changed", "deliveries", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_changed", "deliveries")
    op.drop_table("feed_cursors")
