"""Ingest: folders of FITS files into the catalogue.

The rules (``shared/DESIGN.md``, "Identity" and "Safety"):

* a file whose path, size and mtime are already in the catalogue is unchanged and not read;
* the same bytes (SHA-256) at another path are another copy of the same frame;
* a changed file at a known path gets a new copy row, the old row is kept as history;
* raw frames of one instrument and image type with the same DATE-OBS but other bytes are
  duplicate exposures: ``duplicate_of_id`` points to the first one ingested. Derived frames
  (masters, calibrated, registered, stacked) share DATE-OBS with their inputs and are told
  apart by their provenance, not flagged;
* a file that cannot be read is an ingest problem (path, one-line reason); the batch goes on;
* files are read and written in batches, one transaction each, by a pool of worker processes
  (each batch by one worker; the main process only hands out work). The workers of one run
  write one batch at a time, so each batch sees every batch before it; a batch that clashes
  with a concurrent writer (another process) is rolled back and redone, so two processes
  ingesting one tree give the same catalogue as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError

import archive
from archive.config import Settings, load_settings
from archive.db.base import utcnow
from archive.db.models import IngestRun
from archive.db.session import session_scope, storage_failure
from archive.files import path_to_text
from archive.ingest.catalogue import known_scan_failures, sort_candidates, write_with_retry
from archive.ingest.headers import ReadFailure
from archive.ingest.pool import read_and_write
from archive.ingest.runs import IngestStoppedError, IngestSummary, interrupted_runs, run_host
from archive.ingest.scan import scan_paths
from archive.progress import NoProgress, Progress


def ingest_paths(
    engine: Engine,
    paths: Iterable[str | Path],
    *,
    settings: Settings | None = None,
    dialects: Path | None = None,
    progress: Progress | None = None,
) -> IngestSummary:
    """Ingest every FITS file under ``paths`` into the catalogue.

    Parameters
    ----------
    engine : Engine
        The catalogue (:func:`archive.db.open_catalogue`).
    paths : iterable of str or Path
        Files and folders; folders are walked recursively.
    settings : Settings, optional
        Workers, batch size, FITS extensions and configured sites (default
        :func:`archive.config.load_settings`).
    dialects : Path, optional
        A folder of keyword dialects (default the bundled ``configs/dialects``).
    progress : Progress, optional
        Told the number of files to read and each one read.

    Returns
    -------
    IngestSummary

    Raises
    ------
    FileNotFoundError
        A given path does not exist (nothing is written then).
    """
    settings = settings or load_settings()
    progress = progress or NoProgress()
    paths = [str(p) for p in paths]
    scan = scan_paths(paths)
    summary = IngestSummary(skipped=scan.skipped)
    try:
        with session_scope(engine, write=True) as session:
            summary.interrupted_runs = interrupted_runs(session)
            run = IngestRun(
                started_at=utcnow(), host=run_host(),
                software_version=archive.__version__, roots=[path_to_text(str(Path(p).absolute())) for p in paths],
            )
            session.add(run)
            session.flush()
            summary.run_id = run.id
            sorted_candidates = sort_candidates(session, scan.candidates)
            recorded_failures = known_scan_failures(session, scan.failures)
        todo = sorted_candidates.to_read
        summary.unchanged += sorted_candidates.unchanged
        summary.problems.extend(sorted_candidates.known_bad)
        failures = []  # a path the walk cannot read is recorded once, until it is resolved
        for path, reason in scan.failures:
            if (path, reason) in recorded_failures:
                summary.problems.append((path, reason))
            else:
                failures.append(ReadFailure(path, None, None, reason))
        progress.start(len(todo), "reading headers")
        read_and_write(engine, todo, settings, str(dialects) if dialects else None, summary, progress)
        if failures:
            write_with_retry(engine, failures, summary.run_id, summary)
        progress.finish()
        with session_scope(engine, write=True) as session:
            session.execute(
                update(IngestRun).where(IngestRun.id == summary.run_id).values(
                    finished_at=utcnow(), n_new=summary.new, n_unchanged=summary.unchanged,
                    n_new_copies=summary.new_copies, n_changed=summary.changed,
                    n_problems=len(summary.problems), n_skipped=summary.skipped,
                )
            )
    except (DBAPIError, OSError) as exc:
        reason = storage_failure(exc)
        if reason is None:
            raise
        progress.finish()
        raise IngestStoppedError(f"ingest stopped: {reason}", summary) from exc
    return summary
