"""Baseline: the schema of version 3 (the last of the mechanism before Alembic).

Creates only the tables a database lacks: every table of an empty database; none (or those it never
had) of a database the old code made, brought to version 3 by `maskwatch.store.migrate` first.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA_VERSION = 3  # the `meta` row every database carries (older maskwatch checks it)


def _meta() -> None:
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])


def _minute_stats() -> None:
    op.create_table(
        "minute_stats",
        sa.Column("camera", sa.String(200), primary_key=True),
        sa.Column("minute", sa.DateTime(), primary_key=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("people", "masked", "unmasked", "incorrect", "uncertain", "man", "woman")
        ),
    )
    op.create_index("ix_minute_stats_minute", "minute_stats", ["minute"])


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("camera", sa.String(200), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("mask_label", sa.String(20), nullable=False),
        sa.Column("mask_confidence", sa.Float(), nullable=False),
        sa.Column("gender_label", sa.String(20), nullable=True),
        sa.Column("gender_confidence", sa.Float(), nullable=True),
        sa.Column("snapshot", sa.String(300), nullable=True),
        sa.Column("mail_status", sa.String(20), nullable=False),
    )
    for name in ("camera", "time", "mail_status"):
        op.create_index(f"ix_events_{name}", "events", [name])


def _outbox() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("to", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("event_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
    )
    for name in ("created", "status"):
        op.create_index(f"ix_outbox_{name}", "outbox", [name])


def _users() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"),
    )


def _tokens() -> None:
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(100), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_tokens_user", "tokens", ["user"])


def _settings() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
    )


TABLES: dict[str, Callable[[], None]] = {
    "meta": _meta,
    "minute_stats": _minute_stats,
    "events": _events,
    "outbox": _outbox,
    "users": _users,
    "tokens": _tokens,
    "settings": _settings,
}


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in TABLES.items():
        if name not in present:
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
