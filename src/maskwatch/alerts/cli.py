"""CLI: `maskwatch alerts ...`, `maskwatch events ...`, `maskwatch users ...`, `maskwatch tokens ...`."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from maskwatch.config import apply_overrides, load_settings

config_option = click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MASKWATCH_CONFIG",
    help="TOML config file (default: $MASKWATCH_CONFIG).",
)


def _open(config_file: Path | None):
    """Settings (file + environment + the app's settings page) and the store."""
    from maskwatch.store import Store, StoreError

    try:
        settings = load_settings(config_file)
        store = Store.from_settings(settings)
        overrides = store.get_setting_overrides()
        if overrides:
            settings = apply_overrides(settings, overrides)
    except (StoreError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    return settings, store


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value)
    return t.replace(tzinfo=t.tzinfo or datetime.now().astimezone().tzinfo).astimezone(UTC)


# ---------------------------------------------------------------------------------------------- alerts


@click.group()
def alerts() -> None:
    """Alert emails: test the SMTP settings, look at the outbox, send what is due."""


@alerts.command("test-email")
@click.option("--to", "to", help="Recipient (default: smtp.recipients).")
@config_option
def test_email(to: str | None, config_file: Path | None) -> None:
    """Send one test email now with the configured SMTP settings."""
    from maskwatch.alerts.mail import MailError, send_test_email
    from maskwatch.config import check_email_address

    settings, store = _open(config_file)
    store.close()
    try:
        if to:
            check_email_address(to)
        send_test_email(settings, to)
    except (MailError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"test email sent to {to or ', '.join(settings.smtp.recipients)} via {settings.smtp.host}")


@alerts.command("outbox")
@click.option("--status", type=click.Choice(["queued", "sending", "sent", "failed"]))
@click.option("--limit", default=20, show_default=True)
@config_option
def outbox(status: str | None, limit: int, config_file: Path | None) -> None:
    """List the mail outbox, newest first."""
    _, store = _open(config_file)
    messages, total = store.list_outbox(status=status, limit=limit)
    store.close()
    for m in messages:
        err = f"  error: {m.last_error}" if m.last_error else ""
        click.echo(
            f"{m.id:5d} {m.created:%Y-%m-%d %H:%M:%S} {m.status:8s} tries={m.attempts} {m.subject}{err}"
        )
    click.echo(f"{total} message(s)")


@alerts.command("send")
@config_option
def send(config_file: Path | None) -> None:
    """Send the queued emails that are due, once, and exit."""
    from maskwatch.alerts.mail import MailWorker

    settings, store = _open(config_file)
    worker = MailWorker(settings, store)
    n = worker.send_pending_once()
    store.close()
    click.echo(f"{n} email(s) sent")
    if worker.health["mail_error"]:
        raise click.ClickException(worker.health["mail_error"])


# ---------------------------------------------------------------------------------------------- events


@click.group()
def events() -> None:
    """Alert events: export, retention."""


@events.command("export")
@click.option(
    "--csv",
    "csv_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output CSV file ('-' for standard output).",
)
@click.option("--camera")
@click.option("--since", help="ISO date/time (local unless it has an offset).")
@click.option("--until", help="ISO date/time (local unless it has an offset).")
@config_option
def export(csv_file: Path, camera, since, until, config_file: Path | None) -> None:
    """Export alert events to CSV (oldest first)."""
    settings, store = _open(config_file)
    from maskwatch.alerts.export import csv_chunks

    out = sys.stdout if str(csv_file) == "-" else open(csv_file, "w", newline="", encoding="utf-8")  # noqa: SIM115
    try:
        for chunk in csv_chunks(
            store,
            gender=settings.privacy.gender_enabled,
            camera=camera,
            since=_when(since),
            until=_when(until),
        ):
            out.write(chunk)
        n, labels = 0, Counter[str]()
        for ev in store.iter_events(camera=camera, since=_when(since), until=_when(until)):
            n += 1
            labels[ev.mask_label] += 1
    finally:
        if out is not sys.stdout:
            out.close()
        store.close()
    if out is not sys.stdout:
        by_label = ", ".join(f"{label} {count}" for label, count in sorted(labels.items()))
        click.echo(f"{n} event(s) written to {csv_file}" + (f" ({by_label})" if by_label else ""), err=True)


@events.command("purge")
@click.option("--days", type=int, help="Keep this many days (default: privacy.retention_days).")
@config_option
def purge(days: int | None, config_file: Path | None) -> None:
    """Delete events (and their snapshots), statistics and sent emails older than the retention."""
    settings, store = _open(config_file)
    n = store.purge_older_than(days or settings.privacy.retention_days)
    store.close()
    click.echo(f"{n} event(s) deleted")


# ----------------------------------------------------------------------------------------------- users


@click.group()
def users() -> None:
    """Users of the web app."""


@users.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
def add_user(name: str, password_stdin: bool, config_file: Path | None) -> None:
    """Add a user (or set a new password for an existing one)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _, store = _open(config_file)
    try:
        store.add_user(name, password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"user {name} saved")


@users.command("list")
@config_option
def list_users(config_file: Path | None) -> None:
    """List users."""
    _, store = _open(config_file)
    for name in store.list_users():
        click.echo(name)
    store.close()


@users.command("remove")
@click.argument("name")
@config_option
def remove_user(name: str, config_file: Path | None) -> None:
    """Remove a user: its sessions end at once and its API tokens are revoked (never the last user)."""
    _, store = _open(config_file)
    try:
        removed = store.delete_user(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    if not removed:
        raise click.ClickException(f"no such user: {name}")
    click.echo(f"user {name.strip()} removed")


@users.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@click.option(
    "--expires-days", type=click.IntRange(min=1), help="Valid for this many days (default: until revoked)."
)
@config_option
def token(name: str, label: str, expires_days: int | None, config_file: Path | None) -> None:
    """Create an API token for a user (shown once; only its hash is stored)."""
    _, store = _open(config_file)
    try:
        expires_in = None if expires_days is None else timedelta(days=expires_days)
        click.echo(store.create_token(name, label, expires_in=expires_in))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- tokens


@click.group()
def tokens() -> None:
    """API tokens: list, revoke (create them with `users token NAME`)."""


def _stamp(t: datetime | None, never: str) -> str:
    return never if t is None else f"{t:%Y-%m-%dT%H:%M:%SZ}"


@tokens.command("list")
@click.argument("name", required=False)
@config_option
def list_tokens(name: str | None, config_file: Path | None) -> None:
    """List API tokens (all, or NAME's), one a line, its ID first; never the token itself."""
    _, store = _open(config_file)
    try:
        found = store.list_tokens(name)
    finally:
        store.close()
    for t in found:
        expires = _stamp(t.expires_at, "never") + (" (expired)" if t.expired() else "")
        click.echo(
            f"{t.id}  label={t.label or '-'!r}  user={t.user}  created={_stamp(t.created, '-')}"
            f"  last_used={_stamp(t.last_used_at, 'never')}  expires={expires}"
        )
    click.echo(f"{len(found)} token(s)", err=True)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@config_option
def revoke_token(token_id: str, config_file: Path | None) -> None:
    """Revoke an API token by its ID (from `tokens list`): it is refused at once."""
    from maskwatch.store import TOKEN_ID_RE

    if not TOKEN_ID_RE.fullmatch(token_id.strip().lower()):
        raise click.ClickException(f"not a token ID: {token_id!r} (the first column of `tokens list`)")
    _, store = _open(config_file)
    try:
        revoked = store.revoke_token(token_id)
    finally:
        store.close()
    if not revoked:
        raise click.ClickException(f"no token {token_id}")
    click.echo(f"token {token_id.strip().lower()} revoked")
