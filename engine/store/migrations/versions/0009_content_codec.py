"""Compressed content: ``contents.codec`` says how a row's ``data`` is encoded (engine/store/codec.py).

0 = stored as is (every row written before this migration), 1 = one zstd frame. A column rather than a
magic prefix: old rows hold whatever a sender sent (an unreadable frame is stored too), so bytes that
happen to begin like a zstd frame can never be mistaken for one. A constant default adds the column
without rewriting the table (SQLite, PostgreSQL ≥ 11).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contents") as batch:
        batch.add_column(sa.Column("codec", sa.SmallInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("contents") as batch:
        batch.drop_column("codec")
