"""The store's schema, managed by Alembic (revisions in `alembic/versions/`, no alembic.ini: the
configuration is built here). `upgrade(connection)` runs on every open:

- a database with an `alembic_version` row is upgraded to head; one at a revision this code does not
  know (made by a newer maskwatch) is refused;
- a database of the version mechanism before Alembic (a `meta` row `schema_version`, 1 to 3) is first
  brought to version 3 by the old in-place steps, then goes through the baseline (which creates only the
  tables it lacks, as the old `create_all` did) and the later revisions; a version above 3 is refused;
- an empty database gets every revision.

New revision (a developer command; see DEVELOPERS.md):
    python -m maskwatch.store revision -m "what changes" [--autogenerate]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy import Connection, column, create_engine, inspect, select, table, update

from maskwatch.store.base import StoreError

log = logging.getLogger("maskwatch.store")

SCHEMA_VERSION = 3  # the last version of the mechanism before Alembic; kept in `meta`, checked on open
SCRIPT_LOCATION = Path(__file__).with_name("alembic")
_META = table("meta", column("key"), column("value"))


@cache
def config() -> Config:
    """The Alembic configuration of the store (the connection goes in `attributes["connection"]`)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("file_template", "r%%(rev)s_%%(slug)s")  # module names mypy accepts
    return cfg


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    rev = _script().get_current_head()
    assert rev is not None
    return rev


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection) -> None:
    """Bring the database of `conn` to head (in the caller's transaction); StoreError when it is newer
    than this code."""
    if "meta" in inspect(conn).get_table_names():
        value = conn.scalar(select(_META.c.value).where(_META.c.key == "schema_version"))
        if value is not None:
            _legacy_upgrade(conn, int(value))
    script = _script()
    current = MigrationContext.configure(conn).get_current_heads()
    if current == (head(),):
        return  # the usual open: nothing to run
    for rev in current:
        try:
            known = script.get_revision(rev)
        except (ResolutionError, CommandError):
            known = None
        if known is None:
            raise StoreError(
                f"database schema revision {rev!r} is newer than this maskwatch understands "
                f"(it knows up to {script.get_current_head()!r}); upgrade maskwatch or use another database"
            )
    cfg = config()
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, "head")
    finally:
        del cfg.attributes["connection"]


def _legacy_upgrade(conn: Connection, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this maskwatch understands "
            f"({SCHEMA_VERSION}); upgrade maskwatch or use another database"
        )
    if version == SCHEMA_VERSION:
        return
    while version < SCHEMA_VERSION:
        log.warning("migrating database schema %d -> %d", version, version + 1)
        _LEGACY_STEPS[version](conn)
        version += 1
    conn.execute(update(_META).where(_META.c.key == "schema_version").values(value=str(version)))


def _columns(conn: Connection, name: str) -> set[str] | None:
    """The columns of table `name`; None when there is no such table (the baseline creates it)."""
    insp = inspect(conn)
    return {c["name"] for c in insp.get_columns(name)} if insp.has_table(name) else None


def _add_incorrect_count(conn: Connection) -> None:
    """Schema 1 -> 2: minute statistics count masks worn incorrectly (label `incorrect`)."""
    present = _columns(conn, "minute_stats")
    if present is not None and "incorrect" not in present:
        conn.exec_driver_sql("ALTER TABLE minute_stats ADD COLUMN incorrect INTEGER NOT NULL DEFAULT 0")


def _add_access_columns(conn: Connection) -> None:
    """Schema 2 -> 3: tokens expire and remember their last use; sessions carry a per-user version."""
    for name, col, ddl in (
        ("users", "session_version", "INTEGER NOT NULL DEFAULT 0"),
        ("tokens", "expires_at", "TIMESTAMP"),
        ("tokens", "last_used_at", "TIMESTAMP"),
    ):
        present = _columns(conn, name)
        if present is not None and col not in present:
            conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {col} {ddl}")


# The steps before Alembic: {from_version: function(connection)} bringing the schema to from_version + 1.
_LEGACY_STEPS: dict[int, Callable[[Connection], None]] = {1: _add_incorrect_count, 2: _add_access_columns}


def new_revision(message: str, *, autogenerate: bool = False) -> Any:
    """Write a new revision file (numbered after head); with `autogenerate`, its operations are what
    turns a SQLite database at head into the ORM rows (`maskwatch.store.rows`): review them."""
    cfg = config()
    rev_id = f"{int(head()) + 1:04d}"
    with tempfile.TemporaryDirectory() as d:
        engine = create_engine(f"sqlite:///{Path(d) / 'head.db'}")
        try:
            with engine.begin() as conn:
                upgrade(conn)
                cfg.attributes["connection"] = conn
                try:
                    return command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=rev_id)
                finally:
                    del cfg.attributes["connection"]
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskwatch.store")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new revision file in maskwatch/store/alembic/versions")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true", help="compare the ORM rows with head")
    sub.add_parser("heads", help="print the head revision")
    args = parser.parse_args(argv)
    if args.cmd == "revision":
        new_revision(args.message, autogenerate=args.autogenerate)
    else:
        print(head())
