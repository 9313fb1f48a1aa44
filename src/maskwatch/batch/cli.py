"""`maskwatch batch`: recorded video audited in parallel chunks (docs/batch.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the reports.")
@click.option("--ray", "ray_address", help="Run the chunks as Ray tasks on this cluster (HOST:PORT).")
@click.option(
    "--every-nth", default=1, show_default=True, type=click.IntRange(1), help="Analyse every Nth frame."
)
@click.option(
    "--workers", default=0, type=click.IntRange(0), help="Local worker processes (default: one per core)."
)
@click.option(
    "--chunk-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Chunk length."
)
@click.option("--annotate", is_flag=True, help="Also write NAME.annotated.mp4.")
@click.option("--store", "store_url", help="Also put the per-minute statistics in this event store (URL).")
@click.option(
    "--start", type=click.DateTime(), help="Recording start of the inputs (default: file mtime; UTC)."
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), help="Model directory.")
@click.option("--yunet", "yunet_path", type=click.Path(path_type=Path), help="Local YuNet ONNX file.")
@click.option("--detector", type=click.Choice(["yunet", "res10"]), help="Face detector backend.")
@click.option("--no-gender", is_flag=True, help="Do not compute or show apparent gender.")
def batch(
    inputs: tuple[str, ...],
    out: Path,
    ray_address: str | None,
    every_nth: int,
    workers: int,
    chunk_seconds: float,
    annotate: bool,
    store_url: str | None,
    start: datetime | None,
    config_file: Path | None,
    model_dir: Path | None,
    yunet_path: Path | None,
    detector: str | None,
    no_gender: bool,
) -> None:
    """Audit recorded video: INPUT files or folders (searched recursively) -> per video OUT/NAME.jsonl
    (one line per analysed frame, as `detect --json`, one track id per person across the whole video),
    OUT/NAME.csv (people, masked, unmasked, incorrect, compliance per minute) and, with --annotate,
    OUT/NAME.annotated.mp4. Re-running continues where a killed run stopped.

    \b
    Example:
      maskwatch batch footage/ --out audit/ --chunk-seconds 60 --store sqlite:///audit.db
    """
    from maskwatch.batch.run import BatchOptions, run_batch
    from maskwatch.store.base import StoreError
    from maskwatch.vision.cli import _quiet_opencv, settings_from_options, user_errors

    _quiet_opencv()
    with user_errors():
        # deterministic: detect every frame
        settings = settings_from_options(config_file, model_dir, yunet_path, detector, no_gender, 1)
        opts = BatchOptions(
            out=out,
            every_nth=every_nth,
            chunk_seconds=chunk_seconds,
            workers=workers,
            ray_address=ray_address,
            annotate=annotate,
            store_url=store_url,
            start=None if start is None else start.replace(tzinfo=start.tzinfo or UTC),
        )
        try:
            summary = run_batch(list(inputs), settings, opts)
        except (ValueError, StoreError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary))
