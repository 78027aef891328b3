"""Operations (the admin API): API tokens, the audit trail, and the search keys of messages.

``api_tokens``   one row per token: its role, a SHA-256 of the secret (the secret is shown once, never
                 stored), when it was made, last used and revoked (revoked tokens stay, for the audit trail).
``audit``        one row per content read or action through the admin API or CLI: who (token id and name),
                 what (action), which messages (ids only), from where (client address), when. Append-only:
                 nothing in the engine deletes or updates these rows.
``message_keys`` what a message can be searched by beside its own columns: one row per (message, kind,
                 keyed hash of the value), kinds ``mrn`` and ``accession``. Values are patient data, so
                 only the installation's keyed hash (``Store.pseudonym``) is kept; a search hashes the query.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("token_id", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(200), nullable=False, server_default=""),
        sa.Column("message_ids", sa.Text, nullable=False, server_default=""),
        sa.Column("peer", sa.String(100), nullable=False, server_default=""),
        sa.Column("outcome", sa.String(16), nullable=False, server_default="ok"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "message_keys",
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(24), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "kind", "value"),
    )
    op.create_index("ix_message_keys_value", "message_keys", ["kind", "value", "message_id"])
    # control id search (MSH-10) and message type search, newest first
    op.create_index("ix_messages_control_id", "messages", ["control_id", "received_at"])
    op.create_index("ix_messages_received", "messages", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_received", "messages")
    op.drop_index("ix_messages_control_id", "messages")
    op.drop_index("ix_message_keys_value", "message_keys")
    op.drop_table("message_keys")
    op.drop_index("ix_audit_at", "audit")
    op.drop_table("audit")
    op.drop_table("api_tokens")
