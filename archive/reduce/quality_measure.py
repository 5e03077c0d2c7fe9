"""Frame quality, measuring: which frames are measured, measuring them, the measurements kept.

The pixel side is :mod:`archive.reduce.measure` (run in the executor); judging and verdicts are
:mod:`archive.reduce.quality`. Here:

* :func:`measure_frames` measures frames once per measurement version: a light on its
  current calibrated frame when there is one, else on the raw frame (measured again when a
  calibrated frame appears), any other frame on itself; again with ``force``. Then the groups
  of the measured frames are judged (:func:`archive.reduce.quality.judge_frames`).
* :func:`frame_ids_matching` and :func:`frames_under` pick the measurable frames (by filters,
  by files and folders).
* :func:`stored_stars` gives registration the star lists measuring kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from archive.calib.quality import QualityRules, load_quality_rules
from archive.config import for_instrument
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import (
    FrameFilter,
    canonical_paths,
    frame_query,
    instrument_names,
)
from archive.db.models import Copy, Footprint, Frame, FrameMeasurement, Master, QualityFlag
from archive.db.provenance import current_calibrated
from archive.db.session import session_scope
from archive.progress import NoProgress, Progress
from archive.reduce.executor import SerialExecutor
from archive.reduce.measure import MeasureJob, measure_file, measurement_version
from archive.reduce.quality import (
    MEASURED_TYPES,
    current_measurements,
    judge_frames,
    verdicts,
)

log = logging.getLogger(__name__)

#: Measurement columns filled from a worker's result.
_COLUMNS = ("background_adu", "noise_adu", "background_e", "noise_e", "gain_e_per_adu", "n_stars", "fwhm_px",
            "fwhm_arcsec", "plate_scale_arcsec", "eccentricity", "saturated_fraction", "weight", "read_noise_adu",
            "read_noise_e", "dark_current_adu_s", "dark_current_e_s", "hot_pixels", "flat_snr", "flat_falloff",
            "changed_fraction", "stars")
#: Frames written per transaction.
_BATCH = 50


@dataclass
class MeasureSummary:
    """What :func:`measure_frames` did.

    Attributes
    ----------
    measured : int
    unchanged : int
        Frames already measured under this version (and source).
    failed : list of (str, str)
        (path or frame, reason): a file that could not be read; tried again next run.
    flagged : int
        Frames with at least one flag after judging.
    rejected : int
        Frames whose verdict is ``rejected`` after judging.
    """

    measured: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    flagged: int = 0
    rejected: int = 0


def _previous_master(session: Session, frame: Frame) -> Frame | None:
    """The master of the same kind and instrument (and filter, for flats) made before
    ``frame`` (by DATE-OBS, then id), of the same shape."""
    query = (select(Frame).join(Master, Master.frame_id == Frame.id)
             .where(Frame.image_type == frame.image_type, Frame.id != frame.id, Frame.naxis1 == frame.naxis1,
                    Frame.naxis2 == frame.naxis2))
    query = query.where(Frame.instrument_id == frame.instrument_id if frame.instrument_id is not None
                        else Frame.instrument_id.is_(None))
    if frame.image_type == "master_flat":
        query = query.where(func.lower(func.coalesce(Frame.filter_name, "")) == (frame.filter_name or "").lower())
    if frame.date_obs_s is not None:
        query = query.where((Frame.date_obs_s < frame.date_obs_s)
                            | ((Frame.date_obs_s == frame.date_obs_s) & (Frame.id < frame.id)))
    else:
        query = query.where(Frame.id < frame.id)
    return session.scalars(query.order_by(Frame.date_obs_s.desc(), Frame.id.desc()).limit(1)).first()


def _master_bias_for(session: Session, frame: Frame) -> Frame | None:
    """For a raw dark: the master bias of its instrument and shape nearest in time."""
    query = select(Frame).join(Master, Master.frame_id == Frame.id).where(
        Master.kind == "bias", Master.is_bad.is_(False), Frame.naxis1 == frame.naxis1, Frame.naxis2 == frame.naxis2,
        Frame.instrument_id == frame.instrument_id)
    candidates = list(session.scalars(query))
    if not candidates:
        return None
    return min(candidates, key=lambda m: (abs((m.date_obs_s or 0) - (frame.date_obs_s or 0)), -m.id))


def _jobs(session: Session, frames: Sequence[Frame], rules: QualityRules, version: str, force: bool,
          summary: MeasureSummary) -> list[tuple[MeasureJob, int, int | None]]:
    """The measurement jobs of ``frames`` still to do, with the frame measured (source) and
    the previous master compared with."""
    lights = [f.id for f in frames if f.image_type == "light"]
    calibrated = {light: cal for light, (cal, _) in current_calibrated(session, lights).items()} if lights else {}
    existing = current_measurements(session, [f.id for f in frames], version)
    masters = {m.frame_id: m for batch in chunked([f.id for f in frames])
               for m in session.scalars(select(Master).where(Master.frame_id.in_(batch)))}
    # the plate scale ingest computed from each light's own header WCS (what the worker would
    # compute again from the same cards); a solved or estimated footprint is left to the worker
    scales = dict(row for batch in chunked(lights) for row in session.execute(
        select(Footprint.frame_id, Footprint.pixel_scale_arcsec).where(
            Footprint.frame_id.in_(batch), Footprint.source == "header", Footprint.pixel_scale_arcsec.is_not(None))))
    instruments = instrument_names(session)
    extra: dict[int, Frame | None] = {}
    for f in frames:
        if f.image_type.startswith("master_"):
            extra[f.id] = _previous_master(session, f)
        elif f.image_type == "dark":
            extra[f.id] = _master_bias_for(session, f)
    paths = canonical_paths(session, [f.id for f in frames] + list(calibrated.values())
                            + [e.id for e in extra.values() if e is not None])
    jobs = []
    for f in frames:
        source = calibrated.get(f.id, f.id)
        old = existing.get(f.id)
        if old is not None and not force and old.status == "ok" and old.source_frame_id == source:
            summary.unchanged += 1
            continue
        if source not in paths or f.id not in paths:
            summary.failed.append((f"frame #{f.id}", "no file on disk"))
            continue
        other = extra.get(f.id)
        master = masters.get(f.id)
        jobs.append((MeasureJob(
            frame_id=f.id, path=paths[source], kind=f.image_type, raw_path=paths[f.id], exposure_s=f.exposure_time_s,
            gain_e_per_adu=for_instrument(rules.gains, instruments.get(f.instrument_id)),
            bias_path=paths.get(other.id) if other is not None and f.image_type == "dark" else None,
            bias_subtracted=bool(master.bias_subtracted) if master is not None else False,
            previous_path=paths.get(other.id) if other is not None and f.image_type.startswith("master_") else None,
            plate_scale_arcsec=scales.get(f.id), parameters=dict(rules.measure),
        ), source, other.id if other is not None and f.image_type.startswith("master_") else None))
    return jobs


def _store(session: Session, done: Sequence[tuple[MeasureJob, int, int | None, dict | None, str | None]],
           version: str) -> None:
    """Replace the measurements under ``version`` (and their flags) of the frames in ``done``
    by the new ones: (job, source frame, previous master, result, error) each, written in
    two deletes and one insert for all of them."""
    ids = [job.frame_id for job, *_ in done]
    old = select(FrameMeasurement.id).where(FrameMeasurement.frame_id.in_(ids), FrameMeasurement.version == version)
    session.execute(delete(QualityFlag).where(QualityFlag.measurement_id.in_(old)))
    session.execute(delete(FrameMeasurement).where(FrameMeasurement.frame_id.in_(ids),
                                                   FrameMeasurement.version == version))
    now = utcnow()
    for job, source, previous, result, error in done:
        row = FrameMeasurement(frame_id=job.frame_id, version=version, source_frame_id=source, kind=job.kind,
                               status="ok" if error is None else "failed", message=error, measured_at=now,
                               previous_master_id=previous, parameters=dict(job.parameters))
        for column in _COLUMNS:
            if result is not None and column in result:
                value = result[column]
                setattr(row, column, value.item() if isinstance(value, np.generic) else value)
        session.add(row)


def measure_frames(
    engine: Engine, frame_ids: Sequence[int], *, rules: QualityRules | None = None, executor: Executor | None = None,
    force: bool = False, progress: Progress | None = None,
) -> MeasureSummary:
    """Measure the frames ``frame_ids`` (lights, calibrations, masters) and judge them.

    Each frame is measured once per measurement version (:func:`archive.reduce.measure.
    measurement_version` of the code and ``[measure] version``); a light on its current
    calibrated frame when there is one, else on the raw frame, and again when that changes.
    Pixel work runs in ``executor``; results are written ``_BATCH`` frames per transaction.
    Then the groups of the measured frames are judged (:func:`~archive.reduce.quality.judge_frames`).

    Parameters
    ----------
    engine : Engine
    frame_ids : sequence of int
        Frames of other types (calibrated, registered, stacked) are left out.
    rules : QualityRules, optional
        Default :func:`archive.calib.quality.load_quality_rules`.
    executor : Executor, optional
        Default: in this process.
    force : bool
        Measure again frames already measured under this version.
    progress : Progress, optional

    Returns
    -------
    MeasureSummary
        A frame that cannot be read is recorded as a ``failed`` measurement and in
        ``failed``; it is measured again next run.
    """
    rules = rules or load_quality_rules()
    executor = executor or SerialExecutor()
    progress = progress or NoProgress()
    version = measurement_version(rules.measure.get("version", "1"))
    summary = MeasureSummary()
    with session_scope(engine) as session:
        frames = [f for batch in chunked(set(frame_ids)) for f in session.scalars(
            select(Frame).where(Frame.id.in_(batch), Frame.image_type.in_(MEASURED_TYPES)))]
        frames.sort(key=lambda f: f.id)
        jobs = _jobs(session, frames, rules, version, force, summary)
    progress.start(len(jobs), "measure")
    futures = [(job, source, previous, executor.submit(measure_file, job)) for job, source, previous in jobs]
    for batch in chunked(futures, _BATCH):
        done = []
        for job, source, previous, future in batch:
            try:
                result, error = future.result(), None
            except Exception as exc:  # noqa: BLE001 - one unreadable frame is recorded; the rest go on
                result, error = None, f"{type(exc).__name__}: {exc}"
                summary.failed.append((job.path, error))
                log.warning("%s: not measured: %s", job.path, error)
            else:
                summary.measured += 1
            done.append((job, source, previous, result, error))
            progress.advance()
        # the write transaction is opened once the batch's results are in (not held while
        # the workers measure)
        with session_scope(engine, write=True) as session:
            _store(session, done, version)
    progress.finish()
    with session_scope(engine, write=True) as session:
        judge_frames(session, [f.id for f in frames], rules=rules)
        states = verdicts(session, [f.id for f in frames], rules=rules)
    summary.flagged = sum(1 for v in states.values() if v["flags"])
    summary.rejected = sum(1 for v in states.values() if v["verdict"] == "rejected")
    return summary


def frame_ids_matching(session: Session, filters: FrameFilter | None) -> list[int]:
    """Ids of the measurable frames the filters select (not duplicate exposures), by id."""
    f = FrameFilter(**{**(filters or FrameFilter()).__dict__, "include_duplicates": False})
    query = frame_query(f, Frame.id).where(Frame.image_type.in_(MEASURED_TYPES))
    return list(session.scalars(query.order_by(Frame.id)))


def frames_under(session: Session, paths: Iterable[str | os.PathLike]) -> list[int]:
    """Ids of the measurable frames with a current copy at ``paths`` (files) or under them
    (folders), not duplicate exposures, by id."""
    ids: set[int] = set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            ids.update(frame_ids_matching(session, FrameFilter(folder=path)))
        else:
            ids.update(session.scalars(select(Copy.frame_id).join(Frame, Frame.id == Copy.frame_id).where(
                Copy.path == str(path.absolute()), Copy.is_current, Frame.image_type.in_(MEASURED_TYPES),
                Frame.duplicate_of_id.is_(None))))
    return sorted(ids)


def stored_stars(session: Session, source_ids: Iterable[int], detect_sigma: float,
                 rules: QualityRules | None = None) -> dict[int, dict]:
    """The star lists measured on the frames ``source_ids`` (calibrated frames) with the same
    detection threshold: source id -> ``{'n_stars', 'xy'}`` (xy: ndarray (n, 2), brightest
    first), for registration to reuse instead of detecting again."""
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    out: dict[int, dict] = {}
    for batch in chunked(set(source_ids)):
        for m in session.scalars(select(FrameMeasurement).where(
                FrameMeasurement.source_frame_id.in_(batch), FrameMeasurement.version == version,
                FrameMeasurement.status == "ok", FrameMeasurement.stars.is_not(None))):
            if float((m.parameters or {}).get("detect_sigma", -1)) != float(detect_sigma) or not m.stars:
                continue  # another threshold, or no star found: registration detects again
            xy = np.array([[s[0], s[1]] for s in m.stars], dtype=float).reshape(-1, 2)
            out[m.source_frame_id] = {"n_stars": int(m.n_stars or 0), "xy": xy}
    return out
