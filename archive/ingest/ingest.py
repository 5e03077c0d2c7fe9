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

import datetime as dt
import gc
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

import archive
from archive.config import Settings, load_settings
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.models import DERIVED_TYPES, MASTER_TYPES, Copy, Frame, IngestProblem, IngestRun, Instrument, Night
from archive.db.session import open_catalogue, session_scope, storage_failure
from archive.errors import StorageError
from archive.db.upsert import insert_missing
from archive.files import exit_with_parent, path_to_text, process_alive
from archive.ingest.dialects import DialectSet
from archive.ingest.headers import FileRead, ReadFailure, read_fits
from archive.ingest.library import sync_library
from archive.ingest.sky_config import SkyConfig, load_sky_config
from archive.ingest.scan import Candidate, scan_paths
from archive.ingest.validation import check_value
from archive.progress import NoProgress, Progress

log = logging.getLogger(__name__)

#: Times a batch is redone after clashing with a concurrent writer.
RETRIES = 5
#: Below this many files to read, a process pool costs more than it saves.
POOL_THRESHOLD = 64
#: Batches per worker at least, so that workers stay busy while others write.
_BATCHES_PER_WORKER = 4


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


def _interrupted_runs(session: Session) -> list[int]:
    """Unfinished runs of this host whose process is gone."""
    prefix = f"{socket.gethostname()} pid "
    runs = session.scalars(select(IngestRun).where(IngestRun.finished_at.is_(None), IngestRun.host.startswith(prefix)))
    return sorted(r.id for r in runs if run_state(r) == "interrupted")


class _Stopped(Exception):
    """A batch abandoned because the run is stopping (Ctrl-C in the main process)."""


# -- reading and writing a batch, in worker processes ------------------------------------------

_worker_state: dict = {}


class _WriteTurns:
    """Batches written strictly in their order by the workers of one run.

    So a run writes its batches one at a time and in the order of the files, as one process
    would (which copy of a file found twice becomes canonical does not depend on which worker
    was quicker), and the next batch starts the moment the previous one committed.
    """

    def __init__(self, context):
        self._changed = context.Condition()
        self._next = context.Value("q", 0, lock=False)  # guarded by the condition's lock

    @contextmanager
    def turn(self, number: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._next.value == number)
        try:
            yield
        finally:  # a failed batch passes the turn on too
            with self._changed:
                self._next.value = number + 1
                self._changed.notify_all()


def _init_worker(settings: Settings, dialect_folder: str | None, database: str | None = None,
                 turns: _WriteTurns | None = None, stop=None) -> None:
    _worker_state["dialects"] = DialectSet(Path(dialect_folder) if dialect_folder else None)
    _worker_state["settings"] = settings
    _worker_state["sky"] = load_sky_config(settings)
    _worker_state["turns"] = turns
    _worker_state["stop"] = stop
    if database is not None:  # a pool worker
        # Ctrl-C is the main process's to handle (it sets ``stop``, and the batches handed out
        # end at their next file, passing their turns on); the worker was started with SIGINT
        # blocked (see ingest_paths), so no Ctrl-C can reach it before it ignores it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        exit_with_parent()
        gc.freeze()  # what the worker inherited stays put: later collections do not walk it
        engine = open_catalogue(database, busy_timeout_s=settings.sqlite_busy_timeout_s, create=False)
        multiprocessing.util.Finalize(None, engine.dispose, exitpriority=10)
        _worker_state["engine"] = engine


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (restored after): reading a batch makes many small
    objects and few cycles, and the collector's passes over them cost a quarter of the read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ingest_batch(batch: Sequence[Candidate], run_id: int, number: int, engine: Engine | None = None) -> IngestSummary:
    """Read ``batch`` and write it in one transaction (a worker task); returns its counts."""
    with _without_cyclic_gc():
        return _read_and_write_batch(batch, run_id, number, engine)


def _read_and_write_batch(batch: Sequence[Candidate], run_id: int, number: int, engine: Engine | None) -> IngestSummary:
    settings = _worker_state["settings"]
    stop = _worker_state.get("stop")
    failed: BaseException | None = None
    results = []
    try:
        for c in batch:
            if stop is not None and stop.is_set():
                raise _Stopped()
            results.append(read_fits(c.path, _worker_state["dialects"], folders=c.folders, sites=settings.sites))
        reads = [r for r in results if isinstance(r, FileRead)]
        # the footprints of the frames that get one, before the turn to write (astropy.wcs is
        # loaded for them only: a batch of calibration frames never imports it)
        sky = _worker_state["sky"]
        placeable = [r for r in reads if r.normalized.values["image_type"] in sky.image_types]
        if placeable:
            from archive.ingest.sky import read_footprints

            rows = [_frame_row(r, None, run_id, None) for r in placeable]
            for read, footprint in zip(placeable, read_footprints(rows, sky)):
                read.footprint, read.placed = footprint, True
    except BaseException as exc:  # noqa: BLE001 - raised below, after the turn is passed on
        failed = exc
    summary = IngestSummary()
    turns = _worker_state["turns"]
    with turns.turn(number) if turns is not None else nullcontext():
        if failed is not None:
            raise failed
        if stop is not None and stop.is_set():
            raise _Stopped()
        _write_with_retry(engine or _worker_state["engine"], results, run_id, summary, _worker_state["sky"])
    return summary


def _shareable(engine: Engine) -> bool:
    """Whether worker processes can open the catalogue too (not an in-memory SQLite one)."""
    return engine.dialect.name != "sqlite" or engine.url.database not in (None, "", ":memory:")


# -- writing ------------------------------------------------------------------------------------


def _known_copies(session: Session, candidates: Sequence[Candidate]) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of the current copies among the candidates' paths."""
    paths = [c.path for c in candidates]
    known: dict[str, tuple[int, int]] = {}
    for batch in chunked(paths):
        rows = session.execute(
            select(Copy.path, Copy.size, Copy.mtime_ns).where(Copy.is_current, Copy.path.in_(batch))
        )
        known.update((p, (s, m)) for p, s, m in rows)
    return known


def _known_problems(session: Session, candidates: Sequence[Candidate]) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, reason) of unresolved errors among the candidates' paths."""
    paths = [c.path for c in candidates]
    known: dict[str, tuple[int, int, str]] = {}
    for batch in chunked(paths):
        rows = session.execute(
            select(IngestProblem.path, IngestProblem.size, IngestProblem.mtime_ns, IngestProblem.reason).where(
                IngestProblem.severity == "error", ~IngestProblem.resolved, IngestProblem.path.in_(batch)
            )
        )
        known.update((p, (s, m, r)) for p, s, m, r in rows)
    return known


def to_read(session: Session, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates an ingest would read: neither a current copy with the same size and
    mtime (unchanged) nor an unresolved error recorded for the same size and mtime (a bad file
    is reported again, not read again). ``archive watch`` asks this on start, to pick up what
    arrived while it was down."""
    known = _known_copies(session, candidates)
    known_bad = _known_problems(session, candidates)
    return [c for c in candidates if known.get(c.path) != (c.size, c.mtime_ns)
            and known_bad.get(c.path, (None, None))[:2] != (c.size, c.mtime_ns)]


def _ids(session: Session, model, key, values: set) -> dict:
    if not values:
        return {}
    return dict(session.execute(select(key, model.id).where(key.in_(values))).all())


def _frame_row(read: FileRead, instrument_id: int | None, run_id: int, now: dt.datetime) -> dict:
    values = read.normalized.values
    return {
        "sha256": read.sha256,
        "image_type": values["image_type"],
        "exposure_time_s": values["exposure_time_s"],
        "filter_name": values["filter_name"],
        "binning_x": values["binning_x"],
        "binning_y": values["binning_y"],
        "ccd_temp_c": values["ccd_temp_c"],
        "set_temp_c": values["set_temp_c"],
        "gain": values["gain"],
        "offset": values["offset"],
        "readout_mode": values["readout_mode"],
        "bayer_pattern": values["bayer_pattern"],
        "instrument_id": instrument_id,
        "telescope": values["telescope"],
        "target": values["target"],
        "target_key": values["target_key"],
        "ra_deg": values["ra_deg"],
        "dec_deg": values["dec_deg"],
        "date_obs": values["date_obs"],
        "date_obs_s": values["date_obs_s"],
        "night": values["night"],
        "naxis1": read.naxis[0],
        "naxis2": read.naxis[1],
        "naxis3": read.naxis[2],
        "bitpix": read.bitpix,
        "hdu_index": read.hdu_index,
        "header": read.header,
        "primary_header": read.primary_header,
        "sources": read.normalized.sources,
        "ingested_at": now,
        "run_id": run_id,
    }


def catalogue_batch(session: Session, results: Sequence[FileRead | ReadFailure], run_id: int,
                    summary: IngestSummary | None = None, sky: SkyConfig | None = None) -> dict[str, int]:
    """Catalogue files already read, in the caller's transaction: the core of every ingest.

    The batch ingest is a loop around it, and so is every product a step makes
    (:func:`archive.ingest.products.record_product`). Masters made elsewhere (new frames of a
    master type) join the library here (:func:`archive.ingest.library.sync_library`), and new
    lights get their footprint (:func:`archive.ingest.sky.index_frames`).

    Parameters
    ----------
    session : Session
        Written to and flushed; the caller commits.
    results : sequence of FileRead or ReadFailure
        What :func:`archive.ingest.headers.read_fits` made of each file; a failure becomes a
        problem row.
    run_id : int
        The ingest run these rows belong to.
    summary : IngestSummary, optional
        Given the batch's counts, once everything is written.
    sky : SkyConfig, optional
        Which frames get a footprint (default :func:`archive.ingest.sky_config.load_sky_config`,
        the bundled settings: callers pass the user's, resolved at their entry point).

    Returns
    -------
    dict of str to int
        Path -> frame id of every file read (new frames, new copies, changed, touched).
    """
    now = utcnow()
    counts = IngestSummary()
    reads = [r for r in results if isinstance(r, FileRead)]
    failures = [r for r in results if isinstance(r, ReadFailure)]

    units = {r.normalized.values["instrument"]: (r.normalized.values.get("instrument_model"),
                                                   r.normalized.values.get("instrument_serial"))
             for r in reads if r.normalized.values["instrument"] is not None}
    instrument_names = set(units)
    insert_missing(session, Instrument.__table__, [{"name": n, "model": units[n][0] or n, "serial": units[n][1]}
                                                   for n in sorted(units)])
    instrument_ids = _ids(session, Instrument, Instrument.name, instrument_names)
    nights = {r.normalized.values["night"] for r in reads} - {None}
    insert_missing(session, Night.__table__, [{"night": n} for n in sorted(nights)])

    frame_ids = _ids(session, Frame, Frame.sha256, {r.sha256 for r in reads})
    new_rows: dict[str, dict] = {}
    for read in reads:
        if read.sha256 not in frame_ids and read.sha256 not in new_rows:
            new_rows[read.sha256] = _frame_row(read, instrument_ids.get(read.normalized.values["instrument"]), run_id, now)
    new_frame_ids: dict[str, int] = {}
    if new_rows:
        session.execute(Frame.__table__.insert(), list(new_rows.values()))  # executemany: no RETURNING
        new_frame_ids = _ids(session, Frame, Frame.sha256, set(new_rows))
        frame_ids.update(new_frame_ids)
        masters = [new_frame_ids[sha] for sha, row in new_rows.items() if row["image_type"] in MASTER_TYPES]
        if masters:
            sync_library(session, frame_ids=masters)
        placed = {read.sha256: read.footprint for read in reads if read.placed}
        sky = sky or load_sky_config()
        placeable = [(new_frame_ids[sha], {**row, "footprint": placed[sha]} if sha in placed else row)
                     for sha, row in new_rows.items() if row["image_type"] in sky.image_types]
        if placeable:  # footprints (healpix is loaded for them only)
            from archive.ingest.sky import index_frames

            index_frames(session, placeable, sky, replace=False)  # new frames: none to replace

    paths = [r.path for r in reads]
    current = {c.path: c for c in session.scalars(select(Copy).where(Copy.is_current, Copy.path.in_(paths)))}
    canonical_frames = set(
        session.scalars(select(Copy.frame_id).where(Copy.is_current, Copy.is_canonical, Copy.frame_id.in_(set(frame_ids.values()))))
    )
    new_copies = []
    for read in reads:
        old = current.get(read.path)
        if old is not None and old.sha256 == read.sha256:  # touched, same bytes
            old.size, old.mtime_ns = read.size, read.mtime_ns
            counts.unchanged += 1
            continue
        if old is not None:  # changed bytes at a known path: keep the old row as history
            old.is_current = False
            if old.is_canonical:
                old.is_canonical = False
                canonical_frames.discard(old.frame_id)
            counts.changed += 1
        frame_id = frame_ids[read.sha256]
        is_new_frame = new_frame_ids.pop(read.sha256, None) is not None
        if old is None:
            if is_new_frame:
                counts.new += 1
                counts.by_type[read.normalized.values["image_type"]] += 1
            else:
                counts.new_copies += 1
        new_copies.append({
            "frame_id": frame_id, "path": read.path, "size": read.size, "mtime_ns": read.mtime_ns,
            "sha256": read.sha256, "is_canonical": frame_id not in canonical_frames, "is_current": True,
            "ingested_at": now, "run_id": run_id,
        })
        canonical_frames.add(frame_id)
        if is_new_frame and read.normalized.warnings:
            counts.warnings += 1
            session.add(IngestProblem(
                run_id=run_id, path=read.path, size=read.size, mtime_ns=read.mtime_ns, severity="warning",
                reason="; ".join(read.normalized.warnings), created_at=now, resolved=False,
            ))
    session.flush()  # the superseded copies must stop being current before the new rows arrive
    if new_copies:
        session.execute(Copy.__table__.insert(), new_copies)
    _promote_canonical(session, {c.frame_id for c in current.values() if not c.is_current})
    counts.duplicates = _flag_duplicates(session, {frame_ids[s] for s in new_rows})

    if paths:
        session.execute(
            update(IngestProblem)
            .where(IngestProblem.severity == "error", IngestProblem.path.in_(paths), ~IngestProblem.resolved)
            .values(resolved=True)
        )
    for failure in failures:
        session.add(IngestProblem(
            run_id=run_id, path=failure.path, size=failure.size, mtime_ns=failure.mtime_ns,
            severity="error", reason=failure.reason, created_at=now, resolved=False,
        ))
        counts.problems.append((failure.path, failure.reason))
    session.flush()

    if summary is not None:
        summary.add(counts)  # only now: a batch redone after a clash is counted once
    return {read.path: frame_ids[read.sha256] for read in reads}


def _promote_canonical(session: Session, frame_ids: set[int]) -> None:
    """Give each of ``frame_ids`` that lost its canonical copy a new one (its oldest current copy)."""
    for frame_id in frame_ids:
        has = session.scalar(select(func.count()).where(Copy.frame_id == frame_id, Copy.is_current, Copy.is_canonical))
        if not has:
            first = session.scalar(select(func.min(Copy.id)).where(Copy.frame_id == frame_id, Copy.is_current))
            if first is not None:
                session.execute(update(Copy).where(Copy.id == first).values(is_canonical=True))


def _flag_duplicates(session: Session, new_ids: set[int]) -> int:
    """Point each new raw frame that repeats an earlier raw frame's exposure (same instrument,
    image type and DATE-OBS) to the earliest one."""
    if not new_ids:
        return 0
    new = Frame.__table__.alias("new")
    first = (
        select(func.min(Frame.id))
        .where(
            Frame.instrument_id == new.c.instrument_id,
            Frame.date_obs == new.c.date_obs,
            Frame.image_type.is_not_distinct_from(new.c.image_type),
            Frame.id != new.c.id,
            Frame.duplicate_of_id.is_(None),
        )
        .scalar_subquery()
    )
    rows = session.execute(
        select(new.c.id, first).where(
            new.c.id.in_(new_ids), new.c.instrument_id.is_not(None), new.c.date_obs.is_not(None),
            or_(new.c.image_type.is_(None), new.c.image_type.not_in(DERIVED_TYPES)),
        )
    ).all()
    pairs = [(fid, dup) for fid, dup in rows if dup is not None and dup < fid]
    for fid, dup in pairs:
        session.execute(update(Frame).where(Frame.id == fid).values(duplicate_of_id=dup))
    return len(pairs)


def _write_with_retry(engine: Engine, batch, run_id: int, summary: IngestSummary, sky: SkyConfig | None = None) -> None:
    """Write a batch in one transaction; redo it when it clashed with a concurrent writer, and
    split it when a value failed at any stage (refused by the database, or by a later step such
    as the master library), so that only the offending file fails, as a problem row."""
    for attempt in range(RETRIES):
        try:
            with session_scope(engine, write=True) as session:
                catalogue_batch(session, batch, run_id, summary, sky)
            return
        except (IntegrityError, OperationalError) as exc:
            if attempt == RETRIES - 1 or storage_failure(exc):
                raise
            log.info("batch clashed with a concurrent writer (%s); redoing it", type(exc.orig).__name__)
        except (DataError, ArithmeticError, ValueError, TypeError, KeyError) as exc:
            if len(batch) > 1:
                for item in batch:
                    _write_with_retry(engine, [item], run_id, summary, sky)
                return
            if isinstance(batch[0], ReadFailure):
                raise
            cause = exc.orig if isinstance(exc, DataError) else exc
            reason = f"could not be stored: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
            if isinstance(batch[0], FileRead):  # name the columns ("integer out of range" names none)
                row = _frame_row(batch[0], None, run_id, utcnow())
                bad = [f"{name}={value}" for name, value in row.items() if check_value(name, value, source=name)[1]]
                reason += f" (columns: {', '.join(bad)})" if bad else ""
            log.warning("%s: %s", batch[0].path, reason)
            _write_with_retry(engine, [ReadFailure(batch[0].path, batch[0].size, batch[0].mtime_ns, reason)], run_id, summary, sky)
            return


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
            summary.interrupted_runs = _interrupted_runs(session)
            run = IngestRun(
                started_at=utcnow(), host=run_host(),
                software_version=archive.__version__, roots=[path_to_text(str(Path(p).absolute())) for p in paths],
            )
            session.add(run)
            session.flush()
            summary.run_id = run.id
            known = _known_copies(session, scan.candidates)
            known_bad = _known_problems(session, scan.candidates)
            known_scan_failures = _known_scan_failures(session, scan.failures)
        todo = []
        for candidate in scan.candidates:
            if known.get(candidate.path) == (candidate.size, candidate.mtime_ns):
                summary.unchanged += 1
            elif candidate.path in known_bad and known_bad[candidate.path][:2] == (candidate.size, candidate.mtime_ns):
                summary.problems.append((candidate.path, known_bad[candidate.path][2]))
            else:
                todo.append(candidate)
        failures = []  # a path the walk cannot read is recorded once, until it is resolved
        for path, reason in scan.failures:
            if (path, reason) in known_scan_failures:
                summary.problems.append((path, reason))
            else:
                failures.append(ReadFailure(path, None, None, reason))
        progress.start(len(todo), "reading headers")
        _read_and_write(engine, todo, settings, str(dialects) if dialects else None, summary, progress)
        if failures:
            _write_with_retry(engine, failures, summary.run_id, summary)
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


def _known_scan_failures(session: Session, failures: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """(path, reason) of the walk's failures already recorded as unresolved errors."""
    known: set[tuple[str, str]] = set()
    for batch in chunked([path for path, _reason in failures]):
        known.update(session.execute(
            select(IngestProblem.path, IngestProblem.reason).where(
                IngestProblem.severity == "error", ~IngestProblem.resolved, IngestProblem.path.in_(batch))
        ).all())
    return known


#: Seconds the workers of a stopped run get to end by themselves before they are terminated.
STOP_GRACE_S = 3.0


def _read_and_write(engine: Engine, todo: list[Candidate], settings: Settings, dialect_folder: str | None,
                    summary: IngestSummary, progress: Progress) -> None:
    """Read and write ``todo`` in batches: in this process, or by a pool of workers.

    On Ctrl-C (or any error) in the main process the pool stops within
    :data:`STOP_GRACE_S` seconds: the workers are told to stop (each batch ends at its next
    file, a batch being written commits), batches not started are cancelled, and workers
    still running after the grace period are terminated (their open transaction is rolled
    back by the database). No worker outlives the call.
    """
    workers = settings.workers or os.cpu_count() or 1
    if workers <= 1 or len(todo) < POOL_THRESHOLD or not _shareable(engine):
        _init_worker(settings, dialect_folder)
        for number, batch in enumerate(chunked(todo, settings.batch_size)):
            summary.add(_ingest_batch(batch, summary.run_id, number, engine))
            progress.advance(len(batch))
        return
    database = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context()
    stop = context.Event()
    size = max(1, min(settings.batch_size, -(-len(todo) // (workers * _BATCHES_PER_WORKER))))
    batches = list(chunked(todo, size))
    # Ctrl-C is held back while the pool starts and takes its work, so that it never finds a
    # pool half started (workers nobody waits for); the workers inherit the blocked signal.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker,
            initargs=(settings, dialect_folder, database, _WriteTurns(context), stop),
        )
        futures = [pool.submit(_ingest_batch, batch, summary.run_id, number) for number, batch in enumerate(batches)]
        processes = list((pool._processes or {}).values())  # noqa: SLF001 - to end them, below
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a held-back Ctrl-C is raised here
    try:
        for future, batch in zip(futures, batches):
            summary.add(future.result())
            progress.advance(len(batch))
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        _end_processes(processes + [p for p in (pool._processes or {}).values() if p not in processes])  # noqa: SLF001
        raise
    pool.shutdown(wait=True)


def _end_processes(processes: list, grace_s: float = STOP_GRACE_S) -> None:
    """Wait up to ``grace_s`` seconds for ``processes`` to end, then terminate the rest."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
