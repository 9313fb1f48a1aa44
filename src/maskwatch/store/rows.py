"""The ORM rows of the store (the schema at Alembic head: a change here needs a migration, see
DEVELOPERS.md) and the column type they share."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (portable across SQLite and PostgreSQL), read back as aware UTC. Naive
    datetimes given to the store are taken as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:  # naive datetimes are taken as UTC
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MinuteRow(Base):
    """People seen per camera and minute (distinct tracks), by label."""

    __tablename__ = "minute_stats"
    camera: Mapped[str] = mapped_column(String(200), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, index=True)
    people: Mapped[int] = mapped_column(Integer, default=0)
    masked: Mapped[int] = mapped_column(Integer, default=0)
    unmasked: Mapped[int] = mapped_column(Integer, default=0)
    incorrect: Mapped[int] = mapped_column(Integer, default=0)  # a mask worn with nose or mouth uncovered
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    man: Mapped[int] = mapped_column(Integer, default=0)
    woman: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(200), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    track_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mask_label: Mapped[str] = mapped_column(String(20))
    mask_confidence: Mapped[float] = mapped_column(Float)
    gender_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    gender_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    snapshot: Mapped[str | None] = mapped_column(String(300), nullable=True)
    mail_status: Mapped[str] = mapped_column(String(20), default="none", index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100), nullable=True)  # a user name
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OutboxRow(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    to: Mapped[str] = mapped_column(Text, default="")  # comma-separated; empty: the configured recipients
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list] = mapped_column(JSON, default=list)  # snapshot paths relative to snapshots_dir
    event_ids: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    # kept in each session cookie; a new value (logout, new password) ends every session of the user
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class TokenRow(Base):
    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token
    user: Mapped[str] = mapped_column(String(100), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # None: never
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # about to the minute


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON)


class WebhookDeliveryRow(Base):
    """One alert event to POST to one webhook (maskwatch.integrations.webhooks)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(Integer, index=True)
    webhook: Mapped[str] = mapped_column(String(500))  # WebhookSettings.key: the name, else the URL
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)  # queued/sent/failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sent: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
