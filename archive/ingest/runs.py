"""Ingest runs: what one ingest did (:class:`IngestSummary`), the error that stops one, and the
state of a run (finished, running, or interrupted: its process gone without finishing)."""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.db.models import IngestRun
from archive.errors import StorageError
from archive.files import process_alive


@dataclass
class IngestSummary:
    """What one ingest did.

    Attributes
    ----------
    new : int
        Files that became new frames.
    new_copies : int
        Files whose bytes were already a frame (another path): new copies of known frames.
    changed : int
        Known paths whose bytes changed (a new copy row; the old one kept as history).
    unchanged : int
        Known paths with the same size and mtime (not read), or touched with the same bytes.
    skipped : int
        Files whose name does not say FITS.
    problems : list of (path, reason)
        Files that could not be ingested, including known bad files seen again unchanged.
    warnings : int
        Frames ingested with a gap (no image type, no DATE-OBS, ...), see ``archive problems``.
    duplicates : int
        New frames flagged as duplicate exposures.
    by_type : Counter
        New frames by image type (``None`` for untyped).
    run_id : int
        The ingest run's row.
    interrupted_runs : list of int
        Earlier runs of this host whose process is gone without finishing (killed, Ctrl-C):
        what they committed is kept, and this run did the rest.
    """

    new: int = 0
    new_copies: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: int = 0
    duplicates: int = 0
    by_type: Counter = field(default_factory=Counter)
    run_id: int | None = None
    interrupted_runs: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every FITS file was ingested or unchanged."""
        return not self.problems

    def add(self, other: IngestSummary) -> None:
        """Add the file counts of ``other`` (one batch) to these."""
        for name in ("new", "new_copies", "changed", "unchanged", "warnings", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_type.update(other.by_type)
        self.problems.extend(other.problems)


class IngestStoppedError(StorageError):
    """The catalogue could not take more writes (disk or tablespace full, read-only): the
    ingest stopped. Batches committed before stay; ``summary`` counts what was done."""

    def __init__(self, message: str, summary: IngestSummary):
        super().__init__(message)
        self.summary = summary


#: ``IngestRun.host`` of a run: the host and the process that runs it, so that a later run can
#: tell a run still going from one that was killed (see :func:`run_state`).
_RUN_HOST = "{host} pid {pid}"


def run_host() -> str:
    """``IngestRun.host`` of a run made by this process: ``"HOST pid PID"``."""
    return _RUN_HOST.format(host=socket.gethostname(), pid=os.getpid())


def run_state(run: IngestRun) -> str:
    """``'finished'``, ``'running'``, ``'interrupted'`` (unfinished, and its process on this host
    is gone) or ``'unknown'`` (unfinished, run on another host or before process ids were
    recorded)."""
    if run.finished_at is not None:
        return "finished"
    host, _, pid = (run.host or "").rpartition(" pid ")
    if not pid.isdigit() or host != socket.gethostname():
        return "unknown"
    return "running" if int(pid) == os.getpid() or process_alive(int(pid)) else "interrupted"


def interrupted_runs(session: Session) -> list[int]:
    """Unfinished runs of this host whose process is gone."""
    prefix = f"{socket.gethostname()} pid "
    runs = session.scalars(select(IngestRun).where(IngestRun.finished_at.is_(None), IngestRun.host.startswith(prefix)))
    return sorted(r.id for r in runs if run_state(r) == "interrupted")
