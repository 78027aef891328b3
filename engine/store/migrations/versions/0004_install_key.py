"""A secret key per installation, for pseudonyms in non-content columns.

Ordering lanes (a patient identifier) and the stale-write guard's resource keys (derived from business
identifiers) are stored as keyed hashes (HMAC-SHA256) under this key, so the identifier cannot be
recovered by hashing candidate values. Created once, at the first start, by the store.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "install",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("install")
