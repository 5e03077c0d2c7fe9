"""Writing what was read into the catalogue: the core that catalogues a batch of read files in
one transaction (:func:`catalogue_batch`, which every ingest and every product goes through),
the batch written with retries and split on a bad value (:func:`write_with_retry`), and what
the catalogue already knows of the files to read (unchanged copies, known problems).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.models import DERIVED_TYPES, MASTER_TYPES, Copy, Frame, IngestProblem, Instrument, Night
from archive.db.session import session_scope, storage_failure
from archive.db.upsert import insert_missing
from archive.ingest.headers import FileRead, ReadFailure
from archive.ingest.library import sync_library
from archive.ingest.runs import IngestSummary
from archive.ingest.scan import Candidate
from archive.ingest.sky_config import SkyConfig, load_sky_config
from archive.ingest.validation import check_value

log = logging.getLogger(__name__)

#: Times a batch is redone after clashing with a concurrent writer.
RETRIES = 5


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


@dataclass
class Sorted:
    """Candidates sorted by what the catalogue knows of them (:func:`sort_candidates`)."""

    #: Neither unchanged nor a known bad file: to be read.
    to_read: list[Candidate]
    #: How many are a current copy with the same size and mtime (not read).
    unchanged: int
    #: (path, reason) of those recorded as an unresolved error with the same size and mtime:
    #: reported again, not read again.
    known_bad: list[tuple[str, str]]


def sort_candidates(session: Session, candidates: Sequence[Candidate]) -> Sorted:
    """The candidates an ingest reads, and those it does not: unchanged (a current copy with
    the same size and mtime) or known bad (an unresolved error recorded for the same size and
    mtime). The one rule of ingest and of ``archive watch`` (:func:`to_read`)."""
    known = _known_copies(session, candidates)
    known_bad = _known_problems(session, candidates)
    out = Sorted([], 0, [])
    for c in candidates:
        if known.get(c.path) == (c.size, c.mtime_ns):
            out.unchanged += 1
        elif c.path in known_bad and known_bad[c.path][:2] == (c.size, c.mtime_ns):
            out.known_bad.append((c.path, known_bad[c.path][2]))
        else:
            out.to_read.append(c)
    return out


def to_read(session: Session, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates an ingest would read (:func:`sort_candidates`). ``archive watch`` asks
    this on start, to pick up what arrived while it was down."""
    return sort_candidates(session, candidates).to_read


def _ids(session: Session, model, key, values: set) -> dict:
    if not values:
        return {}
    return dict(session.execute(select(key, model.id).where(key.in_(values))).all())


def frame_row(read: FileRead, instrument_id: int | None, run_id: int, now: dt.datetime) -> dict:
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
            new_rows[read.sha256] = frame_row(read, instrument_ids.get(read.normalized.values["instrument"]), run_id, now)
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


def write_with_retry(engine: Engine, batch, run_id: int, summary: IngestSummary, sky: SkyConfig | None = None) -> None:
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
                    write_with_retry(engine, [item], run_id, summary, sky)
                return
            if isinstance(batch[0], ReadFailure):
                raise
            cause = exc.orig if isinstance(exc, DataError) else exc
            reason = f"could not be stored: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
            if isinstance(batch[0], FileRead):  # name the columns ("integer out of range" names none)
                row = frame_row(batch[0], None, run_id, utcnow())
                bad = [f"{name}={value}" for name, value in row.items() if check_value(name, value, source=name)[1]]
                reason += f" (columns: {', '.join(bad)})" if bad else ""
            log.warning("%s: %s", batch[0].path, reason)
            write_with_retry(engine, [ReadFailure(batch[0].path, batch[0].size, batch[0].mtime_ns, reason)], run_id, summary, sky)
            return


def known_scan_failures(session: Session, failures: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """(path, reason) of the walk's failures already recorded as unresolved errors."""
    known: set[tuple[str, str]] = set()
    for batch in chunked([path for path, _reason in failures]):
        known.update(session.execute(
            select(IngestProblem.path, IngestProblem.reason).where(
                IngestProblem.severity == "error", ~IngestProblem.resolved, IngestProblem.path.in_(batch))
        ).all())
    return known
