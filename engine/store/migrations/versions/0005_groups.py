"""Groups of messages: the inbound messages that are processed together (a DICOM study's instances).

``group_key`` is a keyed hash (the installation key, as for ordering lanes) of what the source groups by
— for DICOM the Study Instance UID — so a stored key cannot be matched to a study by hashing guesses.
Members wait in status ``held`` until their group is assembled into one message, then become
``grouped``; the index finds a channel's held members and a group's members.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("group_key", sa.String(24), nullable=False, server_default=""))
    op.create_index("ix_messages_group", "messages", ["channel", "group_key", "status"])


def downgrade() -> None:
    op.drop_index("ix_messages_group", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("group_key")
