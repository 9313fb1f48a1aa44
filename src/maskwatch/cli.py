"""The `maskwatch` command line. Each area keeps its commands in its own module (listed below)."""

from __future__ import annotations

import importlib
import logging

import click

# (module, command names): subcommands are defined beside the code they drive.
COMMAND_MODULES: list[tuple[str, tuple[str, ...]]] = [
    ("maskwatch.vision.cli", ("detect", "bench")),
    ("maskwatch.alerts.cli", ("alerts", "events", "users", "tokens")),
    ("maskwatch.web.cli", ("serve",)),
    ("maskwatch.monitor.cli", ("monitor",)),
    ("maskwatch.train.cli", ("train", "prepare", "evaluate")),
    ("maskwatch.batch.cli", ("batch",)),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="maskwatch")
def main(verbose: int) -> None:
    """maskwatch: find faces in live video, tell mask / no mask and apparent gender, alert on no mask."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module, _names in COMMAND_MODULES:
    _mod = importlib.import_module(_module)
    for _name in _names:
        main.add_command(getattr(_mod, _name))
