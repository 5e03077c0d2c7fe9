"""``archive ingest``: folders of FITS files into the catalogue."""

from __future__ import annotations

import sys

import click

from archive.cli import AppContext, pass_app
from archive.cli.options import BarProgress
from archive.config import load_settings
from archive.db.session import session_scope
from archive.ingest import ingest_paths
from archive.ingest.runs import IngestStoppedError


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--workers", type=click.IntRange(min=0), help="Processes reading and writing batches of files (default: one per core).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Files per transaction at most (default 1000).")
@click.option("--dialects", type=click.Path(exists=True, file_okay=False),
              help="A folder of keyword dialects to use instead of the bundled configs/dialects.")
@click.option("--measure", is_flag=True, help="Then measure and judge the frames under PATHS (archive measure).")
@pass_app
def ingest(app: AppContext, paths: tuple[str, ...], workers: int | None, batch_size: int | None, dialects: str | None,
           measure: bool) -> None:
    """Ingest the FITS files under PATHS (files or folders, walked recursively).

    Reads headers only (no pixel data), records every frame with its whole header and
    normalized metadata, and each file as a copy of its frame. Unchanged files (same path, size
    and mtime) are not read again. Raw files are opened read-only and never changed.

    \b
    Exit status: 0 when every FITS file was ingested or unchanged, 1 when any could not be
    read (listed at the end and in 'archive problems'), 2 for usage errors.

    \b
    Examples:
      archive ingest /data/2026-11-20
      archive ingest --workers 2 /data/2026-11-*
      archive ingest --measure /data/2026-11-20
      archive --db postgresql://astro@server/archive ingest /mnt/nas/raw
    """
    settings = load_settings({
        "database": {"url": app.settings.database_url},
        "ingest": {"workers": workers, "batch_size": batch_size},
    })
    stopped = None
    try:
        summary = ingest_paths(
            app.catalogue(create=True), paths, settings=settings, dialects=dialects, progress=BarProgress(not app.quiet)
        )
    except IngestStoppedError as exc:  # disk full, read-only: what was done, then the one line
        summary, stopped = exc.summary, exc
    if summary.interrupted_runs:
        click.echo(f"earlier run(s) interrupted: {', '.join(map(str, summary.interrupted_runs))} "
                   "(what they committed is kept; this run did the rest)", err=True)
    if stopped is None and not (summary.new or summary.new_copies or summary.changed or summary.unchanged
                                or summary.problems):
        where = ", ".join(paths)
        click.echo(f"no FITS files under {where}" + (f" ({summary.skipped} other file(s) skipped)" if summary.skipped
                                                     else ""))
        return
    types = ", ".join(f"{n} {t or 'untyped'}" for t, n in sorted(summary.by_type.items(), key=lambda kv: str(kv[0])))
    click.echo(
        f"new frames: {summary.new}" + (f" ({types})" if types else "")
        + f"\nnew copies of known frames: {summary.new_copies}"
        + f"\nchanged files (history kept): {summary.changed}"
        + f"\nunchanged: {summary.unchanged}"
        + f"\nduplicate exposures flagged: {summary.duplicates}"
        + f"\nnon-FITS files skipped: {summary.skipped}"
        + f"\nframes with warnings: {summary.warnings}"
        + f"\nproblems: {len(summary.problems)}"
    )
    for path, reason in summary.problems:
        click.echo(f"  {path}: {reason}", err=True)
    if stopped is not None:
        raise stopped
    if measure:
        from archive.cli.quality import print_measure_summary
        from archive.reduce.config import load_reduction_config
        from archive.reduce.executor import make_executor
        from archive.reduce.quality_measure import frames_under, measure_frames

        config = load_reduction_config(app.settings)
        with session_scope(app.engine) as session:
            ids = frames_under(session, paths)
        with make_executor(config.executor.get("kind", "process"), workers or int(config.executor.get("workers", 0))) as ex:
            measured = measure_frames(app.engine, ids, executor=ex, progress=BarProgress(not app.quiet))
        print_measure_summary(measured)
        if measured.failed:
            sys.exit(1)
    if not summary.ok:
        sys.exit(1)
