"""Delivery ordering and the stale-write guard.

- ``messages.lane``: the ordering lane a message belongs to ('' = unordered): one per patient
  (``ordering: per_patient``) or per channel (``strict``); deliveries to one target go out in message-id
  order within a lane. Indexed with status and id, so the gate reads only a lane's unfinished messages.
- ``messages.source_time``: when the message's event happened at the source (EVN-2, else MSH-7), epoch s.
- ``deliveries.target``: hash of the system a destination writes to (a FHIR base URL), so lanes and the
  stale-write guard meet across channels that deliver to the same EHR.
- ``writes``: per target and resource (the entry's deterministic fullUrl), the newest source time the
  target holds from us.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("lane", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("source_time", sa.Float, nullable=True))
    op.create_index("ix_messages_lane", "messages", ["lane", "status", "id"])
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("target", sa.String(16), nullable=False, server_default=""))
    op.create_table(
        "writes",
        sa.Column("target", sa.String(16), primary_key=True),
        sa.Column("resource", sa.String(64), primary_key=True),
        sa.Column("source_time", sa.Float, nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("writes")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("target")
    op.drop_index("ix_messages_lane", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("source_time")
        batch.drop_column("lane")
