"""``rindex build --ray``, ``rindex ingest`` and ``rindex snapshot``: the scale-out commands (README: Scale-out),
thin shells over :mod:`resynth_index.scale` and the snapshot export."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_common import (
    _config_option,
    _configured,
    _device_option,
    _engine,
    _fail,
    _index_option,
    _progress_option,
    _show_progress,
    _threads_option,
)
from .config import default_index_dir
from .errors import RindexError


def _ray_build(index, config, device, prompts, limit, address, staging, workers, gpus_per_worker, no_ingest, progress):
    from .scale.ray_build import import_ray, ray_build

    try:
        import_ray()  # before any model loads: say how to install it
        # --no-ingest only reads the index (to skip cached prompts); a new index is created as a build would
        existing = Path(index if index is not None else default_index_dir()).exists()
        with _engine(config, index, device, readonly=no_ingest and existing) as engine:
            report = ray_build(engine, prompts, address=address, staging=staging, workers=workers,
                               gpus_per_worker=gpus_per_worker, limit=limit, ingest=not no_ingest, progress=progress,
                               echo=lambda m: click.echo(m, err=True))
    except (RindexError, ConnectionError) as exc:  # ConnectionError: no Ray cluster at ADDRESS
        _fail(exc)
    click.echo(f"skipped {report.skipped} of {report.requested} prompt(s) already cached; "
               f"{report.staged} (prompt, generator) pair(s) were already staged", err=True)
    if report.ingest is not None:
        _report_ingest(report.ingest, engine.index_dir)
    else:
        click.echo(f"shards left in {report.staging}: rindex ingest {report.staging} --index INDEX", err=True)


def _report_ingest(report, index_dir) -> None:
    for line in report.refused:
        click.echo(f"rindex: refused shard {line}", err=True)
    click.echo(f"ingested {report.shards} shard(s): {report.added} (prompt, generator) candidate set(s) added, "
               f"{report.present} already present, {len(report.refused)} shard(s) refused in {report.seconds:.1f}s "
               f"-> {index_dir}", err=True)
    if report.refused:
        sys.exit(1)


@click.command()
@click.argument("staging", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_index_option
@_config_option
@_device_option
@_progress_option
@_threads_option
def ingest(staging, index, config, device, progress, threads):
    """Commit the candidate shards in STAGING (from `rindex build --ray --no-ingest`) into the index.

    Idempotent and resumable; a shard whose namespace is not this configuration's (another embedder, generator
    settings, seeds or γ) is refused and named, the others are committed (exit 1 when any was refused).
    """
    config = _configured(config, threads)
    from .scale.ingest import ingest_staging

    try:
        with _engine(config, index, device) as engine:
            report = ingest_staging(engine, staging, progress=_show_progress(progress))
    except RindexError as exc:
        _fail(exc)
    _report_ingest(report, engine.index_dir)


@click.group()
def snapshot() -> None:
    """Read-only copies of an index for serving replicas (README: Scale-out)."""


@snapshot.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_index_option
@_config_option
@click.option("--keep", type=click.IntRange(min=1), default=None, help="Keep only the newest N snapshots in DIRECTORY.")
@_threads_option
def snapshot_export(directory, index, config, keep, threads):
    """Write a consistent, compact snapshot of the index into the snapshot set DIRECTORY (`rindex serve --index
    DIRECTORY` serves the newest complete one and swaps to newer ones); prints its path."""
    config = _configured(config, threads)
    from .serving.snapshots import export_snapshot
    from .store.export import read_manifest

    try:
        with _engine(config, index, "cpu", readonly=True) as engine:
            path = export_snapshot(engine, directory, keep=keep)
        manifest = read_manifest(path)
    except (RindexError, OSError) as exc:
        _fail(exc)
    size = sum(f["bytes"] for f in manifest["files"].values())
    click.echo(f"snapshot {manifest['snapshot_id']}: {len(manifest['files'])} file(s), {size / 1e6:.1f} MB", err=True)
    click.echo(str(path))


@snapshot.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
def snapshot_verify(directory):
    """Check an exported snapshot's files against its manifest (exit 1 when any differs)."""
    from .store.export import read_manifest, verify_files

    try:
        problems = verify_files(directory)
        manifest = read_manifest(directory)
    except RindexError as exc:
        _fail(exc)
    for line in problems:
        click.echo(f"rindex: {directory}: {line}", err=True)
    click.echo(f"snapshot {manifest['snapshot_id']}: {len(manifest['files'])} file(s), "
               f"{'intact' if not problems else f'{len(problems)} problem(s)'}", err=True)
    sys.exit(1 if problems else 0)
