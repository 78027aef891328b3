"""Input kinds: what a stored message is (``hl7v2``, ``dicom``, ``json``, ``fhir``) and how its bytes decode.

The worker picks the parser and the mapping library by ``kind``; ``charset`` is the text encoding the
source resolved when it accepted the message ('' for binary kinds), so the worker decodes it the same way.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="hl7v2"))
        batch.add_column(sa.Column("charset", sa.String(40), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("charset")
        batch.drop_column("kind")
