"""Webhook deliveries: one row per (alert event, webhook), queued / sent / failed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("webhook", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("sent", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in ("created", "event_id", "status"):
        op.create_index(f"ix_webhook_deliveries_{col}", "webhook_deliveries", [col], unique=False)


def downgrade() -> None:
    for col in ("status", "event_id", "created"):
        op.drop_index(f"ix_webhook_deliveries_{col}", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
