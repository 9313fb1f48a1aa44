"""`maskwatch monitor`: the cameras, alerts and mail of `serve`, without the web app."""

from __future__ import annotations

import json
import signal
import threading

import click

from maskwatch.config import apply_overrides, load_settings, private_data_dir


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file (default: $MASKWATCH_CONFIG, else built-in defaults).",
)
@click.option(
    "--status-every", type=float, default=60.0, show_default=True, help="Print camera health every S s."
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run the cameras as actors on this Ray cluster (cluster.address; extra 'cluster').",
)
def monitor(config_file: str | None, status_every: float, ray_address: str | None) -> None:
    """Watch the configured cameras headless: alerts, statistics and emails as `serve` does, no web.

    Settings saved from the web app's settings page (same database) apply here too. Stop with Ctrl-C or
    SIGTERM: alerts still in memory are stored before it exits."""
    from maskwatch.monitor import Models, Monitor, effective_settings
    from maskwatch.store import Store

    try:
        file_settings = load_settings(config_file)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from exc
    if ray_address:
        file_settings = apply_overrides(file_settings, {"cluster": {"address": ray_address}})
    try:
        private_data_dir(file_settings.data_dir)
        store = Store.from_settings(file_settings)
    except Exception as exc:  # e.g. the database cannot be opened: one clear line
        raise click.ClickException(f"cannot start: {exc}") from exc
    settings = effective_settings(file_settings, store)
    if not settings.cameras:
        store.close()
        raise click.ClickException("no cameras configured (add [[cameras]] to the config file)")
    monitor_class = Monitor
    if settings.cluster.address:  # cameras as Ray actors (extra `cluster`; imported only then)
        from maskwatch.cluster import ClusterMonitor

        monitor_class = ClusterMonitor
    mon = monitor_class(settings, store, models=Models(settings, threads=1))
    error = mon.models.warm()
    if error:
        store.close()
        raise click.ClickException(f"models unavailable: {error}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    mon.start()
    click.echo(f"maskwatch monitor: {len(settings.cameras)} camera(s); Ctrl-C to stop", err=True)
    try:
        while not done.wait(status_every):
            brief = [
                {k: d.get(k) for k in ("name", "state", "fps", "dropped", "latency_ms")}
                for d in mon.describe()
            ]
            click.echo(json.dumps(brief), err=True)
    finally:
        mon.stop()
        store.close()
