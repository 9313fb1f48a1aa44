"""The store's schema under Alembic: fresh databases, databases of the version mechanism before Alembic,
and databases newer than the code."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maskwatch.store import SCHEMA_VERSION, Base, Store, StoreError, migrate

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)

# `iterdump()` of a database written by the code before Alembic (schema version 3, commit 3a7bf37): one
# camera-minute, one event with its queued email, a user with a token (expiring in 2099), settings.
SCHEMA_3_DUMP = """
CREATE TABLE events (id INTEGER NOT NULL, camera VARCHAR(200) NOT NULL, time DATETIME NOT NULL,
  track_id INTEGER, mask_label VARCHAR(20) NOT NULL, mask_confidence FLOAT NOT NULL, gender_label VARCHAR(20),
  gender_confidence FLOAT, snapshot VARCHAR(300), mail_status VARCHAR(20) NOT NULL, PRIMARY KEY (id));
INSERT INTO "events" VALUES(1,'door','2026-03-01 12:00:05.000000',1,'no_mask',0.9,'woman',0.8,NULL,'queued');
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
INSERT INTO "meta" VALUES('schema_version','3');
CREATE TABLE minute_stats (camera VARCHAR(200) NOT NULL, minute DATETIME NOT NULL, people INTEGER NOT NULL,
  masked INTEGER NOT NULL, unmasked INTEGER NOT NULL, incorrect INTEGER NOT NULL, uncertain INTEGER NOT NULL,
  man INTEGER NOT NULL, woman INTEGER NOT NULL, PRIMARY KEY (camera, minute));
INSERT INTO "minute_stats" VALUES('door','2026-03-01 12:00:00.000000',1,0,1,0,0,0,1);
CREATE TABLE outbox (id INTEGER NOT NULL, created DATETIME NOT NULL, "to" TEXT NOT NULL,
  subject TEXT NOT NULL,
  text TEXT NOT NULL, html TEXT NOT NULL, attachments JSON NOT NULL, event_ids JSON NOT NULL,
  status VARCHAR(20) NOT NULL, attempts INTEGER NOT NULL, next_attempt DATETIME, last_error TEXT,
  sent_at DATETIME, PRIMARY KEY (id));
INSERT INTO "outbox" VALUES(1,'2026-03-01 12:00:05.000000','a@example.org','alert','text','<p>html</p>','[]',
  '[1]','queued',0,'2026-03-01 12:00:05.000000',NULL,NULL);
CREATE TABLE settings ("key" VARCHAR(64) NOT NULL, value JSON NOT NULL, PRIMARY KEY ("key"));
INSERT INTO "settings" VALUES('overrides','{"alerts": {"cooldown_s": 42}}');
CREATE TABLE tokens (token_hash VARCHAR(64) NOT NULL, user VARCHAR(100) NOT NULL, label VARCHAR(200) NOT NULL,
  created DATETIME NOT NULL, expires_at DATETIME, last_used_at DATETIME, PRIMARY KEY (token_hash));
INSERT INTO "tokens" VALUES('173235d64e321d940ebac685f4109cbf2936cefbafa36b75cb7d2f81837a7703','admin',
  'script','2026-12-02 15:41:50.202154','2099-01-01 15:41:50.202154',NULL);
CREATE TABLE users (name VARCHAR(100) NOT NULL, password_hash TEXT NOT NULL, created DATETIME NOT NULL,
  session_version INTEGER DEFAULT '0' NOT NULL, PRIMARY KEY (name));
INSERT INTO "users" VALUES('admin',
  '$argon2id$v=19$m=65536,t=3,p=4$FmEkrLMQVMIXv6nhp6ukmQ$' || '+Gkx8iPDZimU12JWjr0+htzQYT7cDrOxr113gGpJQK4',
  '2026-12-02 15:41:50.194348',2055104658);
CREATE INDEX ix_minute_stats_minute ON minute_stats (minute);
CREATE INDEX ix_events_time ON events (time);
CREATE INDEX ix_events_camera ON events (camera);
CREATE INDEX ix_events_mail_status ON events (mail_status);
CREATE INDEX ix_outbox_created ON outbox (created);
CREATE INDEX ix_outbox_status ON outbox (status);
CREATE INDEX ix_tokens_user ON tokens (user);
"""
SCHEMA_3_TOKEN = "mw_f2NEeKSTEBqCAEwogsNH5dX2Aguoc8F1zPD0OjUrqcw"
SCHEMA_3_PASSWORD = "old password 1"


def _old_database(path, *extra_sql: str) -> str:
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_3_DUMP + "".join(extra_sql))
    con.close()
    return f"sqlite:///{path}"


def _schema_differences(store: Store) -> list:
    """What autogenerate would change to make the database match the ORM rows (nothing, at head)."""
    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_fresh_database_is_at_head_and_matches_the_rows(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'm.db'}", snapshots_dir=tmp_path / "snaps")
    assert store.schema_revision() == migrate.head()
    assert store.schema_version() == SCHEMA_VERSION == 3  # the meta row older maskwatch checks
    assert _schema_differences(store) == []
    store.close()


def test_database_of_the_previous_code_upgrades_and_keeps_its_rows(tmp_path):
    url = _old_database(tmp_path / "m.db")
    store = Store(url, snapshots_dir=tmp_path / "snaps")
    assert store.schema_revision() == migrate.head() and store.schema_version() == 3
    assert _schema_differences(store) == []  # the baseline is the schema the old code made
    assert store.stats()["totals"]["unmasked"] == 1 and store.cameras() == ["door"]
    (event,), total = store.list_events()
    assert total == 1 and (event.camera, event.time, event.mail_status) == ("door", T0, "queued")
    (msg,), _ = store.list_outbox()
    assert msg.to == ["a@example.org"] and msg.event_ids == [1] and msg.status == "queued"
    assert store.verify_user("admin", SCHEMA_3_PASSWORD) and store.session_version("admin") == 2055104658
    assert store.verify_token(SCHEMA_3_TOKEN) == "admin"
    assert store.get_setting_overrides() == {"alerts": {"cooldown_s": 42}}
    store.add_user("bob", "bob password 1")  # and it is writable
    store.close()
    store = Store(url, snapshots_dir=tmp_path / "snaps")  # reopening an upgraded database: a no-op
    assert store.list_users() == ["admin", "bob"] and store.schema_revision() == migrate.head()
    store.close()


def test_schema_1_database_without_alembic_runs_the_old_steps_first(tmp_path):
    url = _old_database(
        tmp_path / "m.db",
        "ALTER TABLE minute_stats DROP COLUMN incorrect; ALTER TABLE tokens DROP COLUMN expires_at;",
        "ALTER TABLE tokens DROP COLUMN last_used_at; ALTER TABLE users DROP COLUMN session_version;",
        "DROP TABLE settings; UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    store = Store(url, snapshots_dir=tmp_path / "snaps")
    assert store.schema_version() == 3 and store.schema_revision() == migrate.head()
    # columns added in place, the missing table created; the old step named SQLite's DATETIME TIMESTAMP
    # (same storage and values: a difference of spelling only)
    changes = [change for diff in _schema_differences(store) for change in diff]
    assert sorted((c[0], c[2], c[3], str(c[5])) for c in changes) == [
        ("modify_type", "tokens", "expires_at", "TIMESTAMP"),
        ("modify_type", "tokens", "last_used_at", "TIMESTAMP"),
    ]
    totals = store.stats()["totals"]
    assert (totals["people"], totals["unmasked"], totals["incorrect"]) == (1, 1, 0)
    assert store.verify_token(SCHEMA_3_TOKEN) == "admin" and store.session_version("admin") == 0
    assert store.get_setting_overrides() == {}
    store.close()


def test_database_at_an_unknown_newer_revision_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Store(url, snapshots_dir=tmp_path / "snaps").close()
    con = sqlite3.connect(tmp_path / "m.db")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=r"revision '9999' is newer than this maskwatch understands"):
        Store(url, snapshots_dir=tmp_path / "snaps")


def test_legacy_version_newer_than_the_code_is_refused(tmp_path):
    url = _old_database(tmp_path / "m.db", "UPDATE meta SET value = '4' WHERE key = 'schema_version';")
    with pytest.raises(StoreError, match="schema version 4 is newer than this maskwatch"):
        Store(url, snapshots_dir=tmp_path / "snaps")
    con = sqlite3.connect(tmp_path / "m.db")  # and nothing was changed
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'alembic_version'").fetchall() == []
    con.close()
