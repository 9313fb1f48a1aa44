"""The database, behind one package: statistics, alert events, the mail outbox, users, API tokens,
settings.

SQLAlchemy 2; a SQLite file (WAL) in the data directory by default, PostgreSQL by URL
(`database_url = "postgresql+psycopg://user:pass@host/db"`). The schema is managed by Alembic
(`migrate.py`, revisions in `alembic/versions/`): opening a store upgrades it to head, databases of the
version mechanism before Alembic included; a database newer than the code is refused with a clear
message. Snapshot JPEGs live as files under `snapshots_dir`; rows keep their relative path.

`Store` (core.py) composes the sections: events.py, outbox.py, stats.py (with the in-memory
per-minute buffer of minutes.py), users.py, settings.py; rows.py holds the ORM rows.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> store = Store(f"sqlite:///{d / 'm.db'}", snapshots_dir=d / "snapshots")
    >>> store.add_user("admin", "correct horse")
    >>> store.verify_user("admin", "correct horse"), store.verify_user("admin", "wrong")
    (True, False)
    >>> store.schema_revision() == migrate.head()
    True
    >>> store.close()
"""

from maskwatch.store import migrate
from maskwatch.store.base import StoreError, utcnow
from maskwatch.store.core import Store
from maskwatch.store.events import Event
from maskwatch.store.migrate import SCHEMA_VERSION
from maskwatch.store.outbox import MAIL_STATUSES, MailDraft, OutboxMessage
from maskwatch.store.rows import (
    Base,
    EventRow,
    MetaRow,
    MinuteRow,
    OutboxRow,
    SettingRow,
    TokenRow,
    UserRow,
    UTCDateTime,
)
from maskwatch.store.users import TOKEN_ID_LEN, TOKEN_ID_RE, TOKEN_USE_RESOLUTION, TokenInfo

__all__ = [
    "MAIL_STATUSES",
    "SCHEMA_VERSION",
    "TOKEN_ID_LEN",
    "TOKEN_ID_RE",
    "TOKEN_USE_RESOLUTION",
    "Base",
    "Event",
    "EventRow",
    "MailDraft",
    "MetaRow",
    "MinuteRow",
    "OutboxMessage",
    "OutboxRow",
    "SettingRow",
    "Store",
    "StoreError",
    "TokenInfo",
    "TokenRow",
    "UTCDateTime",
    "UserRow",
    "migrate",
    "utcnow",
]
