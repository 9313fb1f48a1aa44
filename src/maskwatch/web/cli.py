"""`maskwatch serve`: the web app, camera workers, alert engine and mail worker in one process."""

from __future__ import annotations

import click

from maskwatch.config import AlertSettings, apply_overrides, load_settings


def _url(host: str, port: int, tls: bool) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: web.port, 8000).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file (default: $MASKWATCH_CONFIG, else built-in defaults).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TLS certificate: browsers allow webcams only on https or localhost.",
)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run the cameras as actors on this Ray cluster (cluster.address; extra 'cluster').",
)
def serve(host, port, config_file, ssl_certfile, ssl_keyfile, ray_address) -> None:
    """Serve the web app (live view, uploads, events, statistics, settings, REST API)."""
    import uvicorn

    from maskwatch.web.app import create_app

    try:
        settings = load_settings(config_file)
    except (FileNotFoundError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"bad configuration: {exc}") from exc
    if ray_address:
        settings = apply_overrides(settings, {"cluster": {"address": ray_address}})
    host = host or settings.web.host
    port = port or settings.web.port
    url = _url(host, port, bool(ssl_certfile))
    if settings.alerts.base_url == AlertSettings().base_url:  # not configured: links in emails use this URL
        settings = apply_overrides(settings, {"alerts": {"base_url": url}})
    try:
        app = create_app(settings, https=bool(ssl_certfile))
    except Exception as exc:  # e.g. the database cannot be opened: one clear line, no traceback
        raise click.ClickException(f"cannot start: {exc}") from exc
    rt = app.state.runtime
    click.echo(f"maskwatch: open {url}/  (data: {settings.data_dir})")
    if rt.setup_token:
        click.echo("No user exists yet. Create the administrator with this one-time link:")
        click.echo(f"    {url}/setup?token={rt.setup_token}")
        click.echo("or, in another terminal: maskwatch users add admin")
    if host not in ("127.0.0.1", "localhost", "::1") and not ssl_certfile:
        click.echo(
            "Note: browsers share a webcam only over https or on localhost; use --ssl-certfile/"
            "--ssl-keyfile (or a TLS proxy) for remote viewers."
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ws_max_size=8 << 20,
        timeout_graceful_shutdown=3,
        proxy_headers=False,
    )
