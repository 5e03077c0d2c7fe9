"""Frame quality in the catalogue: measuring frames, judging them, overrides and verdicts.

The pixel side is :mod:`archive.reduce.measure` (run in the executor); the rules are
:mod:`archive.calib.quality` (data in ``configs/quality/``). Here:

* :func:`measure_frames` measures frames once per measurement version: a light on its
  current calibrated frame when there is one, else on the raw frame (measured again when a
  calibrated frame appears), any other frame on itself; again with ``force``.
* :func:`judge_frames` applies the rules to the groups the frames belong to (instrument,
  target, filter and night; group limits need the whole group) and replaces their flags.
* :func:`set_override` records a person's accept or reject.
* :func:`verdicts` reads the verdict of frames: the latest override, else ``rejected`` when a
  flag of the current rules with action ``reject`` is stored, else ``accepted``. A frame never
  measured is ``accepted`` (nothing speaks against it) and says so (``unmeasured``).
* :func:`quality_table` is ``archive quality`` as a DataFrame; :func:`rejected_frames` lists the
  frames rejected by quality (``archive problems --quality``, the web view's problems page).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, Select, and_, delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from archive.calib.quality import METRICS, QualityRules, judge, load_quality_rules
from archive.config import for_instrument
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, canonical_paths, frame_query, instrument_names
from archive.db.models import (
    Copy,
    Frame,
    FrameMeasurement,
    Master,
    QualityFlag,
    QualityOverride,
    Reduction,
    ReductionInput,
)
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.progress import NoProgress, Progress
from archive.reduce.executor import SerialExecutor
from archive.reduce.measure import MeasureJob, measure_file, measurement_version

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Image types measured.
MEASURED_TYPES = ("light", "bias", "dark", "flat", "master_bias", "master_dark", "master_flat")
#: Measurement columns filled from a worker's result.
_COLUMNS = ("background_adu", "noise_adu", "background_e", "noise_e", "gain_e_per_adu", "n_stars", "fwhm_px",
            "fwhm_arcsec", "plate_scale_arcsec", "eccentricity", "saturated_fraction", "weight", "read_noise_adu",
            "read_noise_e", "dark_current_adu_s", "dark_current_e_s", "hot_pixels", "flat_snr", "flat_falloff",
            "changed_fraction", "stars")
#: Frames written per transaction.
_BATCH = 50


class QualityError(LookupError, ArchiveError):
    """A frame named for an override is not in the catalogue."""


class OverrideError(ValueError, ArchiveError):
    """An override without a reason, or with a verdict other than accept or reject."""


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


def _current_measurements(session: Session, frame_ids: Iterable[int], version: str,
                          among: Select | None = None) -> dict[int, FrameMeasurement]:
    """frame id -> its measurement of ``version``; through ``among`` (a statement selecting
    exactly ``frame_ids``) rather than ``IN`` lists when given (see :func:`verdicts`)."""
    out: dict[int, FrameMeasurement] = {}
    frame_ids = set(frame_ids)
    for batch in ([among] if frame_ids else []) if among is not None else chunked(frame_ids):
        for m in session.scalars(select(FrameMeasurement).where(
                FrameMeasurement.frame_id.in_(batch), FrameMeasurement.version == version)):
            out[m.frame_id] = m
    return out


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
    from archive.reduce.registration import current_calibrated  # registration imports this module

    lights = [f.id for f in frames if f.image_type == "light"]
    calibrated = {light: cal for light, (cal, _) in current_calibrated(session, lights).items()} if lights else {}
    existing = _current_measurements(session, [f.id for f in frames], version)
    masters = {m.frame_id: m for batch in chunked([f.id for f in frames])
               for m in session.scalars(select(Master).where(Master.frame_id.in_(batch)))}
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
            parameters=dict(rules.measure),
        ), source, other.id if other is not None and f.image_type.startswith("master_") else None))
    return jobs


def _store(session: Session, job: MeasureJob, source: int, previous: int | None, version: str,
           result: dict | None, error: str | None) -> None:
    session.execute(delete(QualityFlag).where(QualityFlag.measurement_id.in_(
        select(FrameMeasurement.id).where(FrameMeasurement.frame_id == job.frame_id,
                                          FrameMeasurement.version == version))))
    session.execute(delete(FrameMeasurement).where(FrameMeasurement.frame_id == job.frame_id,
                                                   FrameMeasurement.version == version))
    row = FrameMeasurement(frame_id=job.frame_id, version=version, source_frame_id=source, kind=job.kind,
                           status="ok" if error is None else "failed", message=error, measured_at=utcnow(),
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
    Then the groups of the measured frames are judged (:func:`judge_frames`).

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
        with session_scope(engine, write=True) as session:
            for job, source, previous, future in batch:
                try:
                    result, error = future.result(), None
                except Exception as exc:  # noqa: BLE001 - one unreadable frame is recorded; the rest go on
                    result, error = None, f"{type(exc).__name__}: {exc}"
                    summary.failed.append((job.path, error))
                    log.warning("%s: not measured: %s", job.path, error)
                else:
                    summary.measured += 1
                _store(session, job, source, previous, version, result, error)
                progress.advance()
    progress.finish()
    with session_scope(engine, write=True) as session:
        judge_frames(session, [f.id for f in frames], rules=rules)
        states = verdicts(session, [f.id for f in frames], rules=rules)
    summary.flagged = sum(1 for v in states.values() if v["flags"])
    summary.rejected = sum(1 for v in states.values() if v["verdict"] == "rejected")
    return summary


def _group_key(frame: Frame) -> tuple:
    return (frame.image_type, frame.instrument_id, frame.target_key, (frame.filter_name or "").lower(), frame.night)


def _judge_groups(session: Session, frame_ids: Iterable[int], rules: QualityRules
                  ) -> tuple[list, dict[int, FrameMeasurement]]:
    """The flags of the groups of ``frame_ids`` under ``rules`` (nothing written), and the
    current measurement of every frame judged."""
    version = measurement_version(rules.measure.get("version", "1"))
    frames = [f for batch in chunked(set(frame_ids)) for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))]
    keys = {_group_key(f) for f in frames if f.image_type in MEASURED_TYPES}
    members: list[tuple[Frame, FrameMeasurement]] = []
    for image_type, instrument_id, target, filter_name, night in keys:
        query = (select(Frame, FrameMeasurement).join(FrameMeasurement, FrameMeasurement.frame_id == Frame.id)
                 .where(FrameMeasurement.version == version, FrameMeasurement.status == "ok",
                        Frame.image_type == image_type,
                        func.lower(func.coalesce(Frame.filter_name, "")) == filter_name))
        for column, value in ((Frame.instrument_id, instrument_id), (Frame.target_key, target), (Frame.night, night)):
            query = query.where(column == value if value is not None else column.is_(None))
        members += [tuple(row) for row in session.execute(query)]
    # each instrument by its own limits (a group is of one instrument)
    by_instrument: dict[int | None, list[tuple[Frame, FrameMeasurement]]] = defaultdict(list)
    for f, mm in members:
        by_instrument[f.instrument_id].append((f, mm))
    names = instrument_names(session, list(by_instrument)) if rules.limits else {}
    flags = []
    for instrument_id, rows in by_instrument.items():
        flags += judge(rules.for_instrument(names.get(instrument_id)),
                       ((f.id, f.image_type, _group_key(f), {m: getattr(mm, m) for m in METRICS}) for f, mm in rows))
    return flags, {f.id: mm for f, mm in members}


def judge_frames(session: Session, frame_ids: Iterable[int], *, rules: QualityRules | None = None) -> int:
    """Judge the groups of ``frame_ids`` by the rules and replace their flags.

    A group is every frame of one image type, instrument, target, filter and night with a
    current measurement; all of its frames are judged again, since a group limit depends on
    each of them. Sets ``judged_version``. Flushes; the caller commits.

    Returns
    -------
    int
        Flags written.
    """
    rules = rules or load_quality_rules()
    flags, by_frame = _judge_groups(session, frame_ids, rules)
    for batch in chunked([mm.id for mm in by_frame.values()]):
        session.execute(delete(QualityFlag).where(QualityFlag.measurement_id.in_(batch)))
    now = utcnow()
    for flag in flags:
        session.add(QualityFlag(frame_id=flag.frame_id, measurement_id=by_frame[flag.frame_id].id, rule=flag.rule,
                                rule_version=rules.version, metric=flag.metric, value=flag.value,
                                limit_value=flag.limit, bound=flag.bound, scope=flag.scope, action=flag.action,
                                created_at=now))
    for mm in by_frame.values():
        mm.judged_version = rules.version
    session.flush()
    return len(flags)


def _flag_text(rule: str, metric: str, value: float, bound: str, limit: float, scope: str) -> str:
    return (f"{rule}: {metric} {value:.4g} {'<' if bound == 'min' else '>'} {limit:.4g}"
            + (" (group)" if scope == "group" else ""))


def set_override(session: Session, frame_ids: Sequence[int], verdict: str, reason: str,
                 user: str | None = None) -> list[int]:
    """Record a person's verdict (``accept`` or ``reject``) on frames; it wins over the rules.

    Raises
    ------
    OverrideError
        ``verdict`` is not accept or reject, or ``reason`` is empty.
    QualityError
        A frame id is not in the catalogue.
    """
    if verdict not in ("accept", "reject"):
        raise OverrideError(f"verdict must be 'accept' or 'reject', not {verdict!r}")
    if not reason or not reason.strip():
        raise OverrideError("an override needs a reason")
    known = {i for batch in chunked(set(frame_ids)) for i in session.scalars(select(Frame.id).where(Frame.id.in_(batch)))}
    missing = sorted(set(frame_ids) - known)
    if missing:
        raise QualityError(f"no frame #{', #'.join(map(str, missing))} in the catalogue")
    if user is None:
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name on this system
            user = None
    now = utcnow()
    for frame_id in frame_ids:
        session.add(QualityOverride(frame_id=frame_id, verdict=verdict, reason=reason.strip(), by_user=user,
                                    created_at=now))
    session.flush()
    return list(frame_ids)


def verdicts(session: Session, frame_ids: Iterable[int], *, rules: QualityRules | None = None,
             among: Select | None = None) -> dict[int, dict]:
    """The verdict of each frame (nothing is written).

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
    rules : QualityRules, optional
    among : Select, optional
        A statement selecting exactly ``frame_ids`` (one column of frame ids): the
        measurements, flags and overrides are then looked up through it, in one statement
        each, instead of through ``IN`` lists of the ids (thousands of bound values that
        PostgreSQL plans slowly).

    Returns
    -------
    dict
        frame id -> ``{'verdict': 'accepted'|'rejected', 'by': 'override'|'rules'|'unmeasured',
        'reasons': [str], 'flags': [str], 'other_version': str or None}``. The latest override
        wins; else a flag of the current rules with action ``reject`` rejects. Flags are the
        stored ones when the frame was judged under the current rules, else computed here from
        its group (:func:`judge_frames` stores them). ``other_version`` names a measurement of
        another version when the frame has none of the current one.
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    ids = sorted(set(frame_ids))
    out = {i: {"verdict": "accepted", "by": "unmeasured", "reasons": [], "flags": [], "other_version": None}
           for i in ids}
    unjudged: list[int] = []
    if among is not None:
        batches = [among] if ids else []
    else:
        batches = list(chunked(ids))
    for batch in batches:
        for m in session.scalars(select(FrameMeasurement).where(FrameMeasurement.frame_id.in_(batch))):
            if m.version != version:
                if out[m.frame_id]["by"] == "unmeasured":
                    out[m.frame_id]["other_version"] = m.version
                continue
            if m.status == "ok":
                out[m.frame_id]["by"] = "rules"
                out[m.frame_id]["other_version"] = None
                if m.judged_version != rules.version:
                    unjudged.append(m.frame_id)
        rows = session.execute(
            select(QualityFlag).join(FrameMeasurement, FrameMeasurement.id == QualityFlag.measurement_id)
            .where(QualityFlag.frame_id.in_(batch), FrameMeasurement.version == version,
                   QualityFlag.rule_version == rules.version).order_by(QualityFlag.id)).scalars()
        found = [(f.frame_id, f.rule, f.metric, f.value, f.bound, f.limit_value, f.scope, f.action) for f in rows]
        if unjudged:
            flags, _ = _judge_groups(session, unjudged, rules)
            skip = set(unjudged)
            found = [row for row in found if row[0] not in skip]
            found += [(f.frame_id, f.rule, f.metric, f.value, f.bound, f.limit, f.scope, f.action) for f in flags
                      if f.frame_id in skip]
            unjudged = []
        for frame_id, rule, metric, value, bound, limit, scope, action in found:
            text = _flag_text(rule, metric, value, bound, limit, scope)
            out[frame_id]["flags"].append(text)
            if action == "reject":
                out[frame_id]["verdict"] = "rejected"
                out[frame_id]["reasons"].append(text)
        latest = (select(QualityOverride.frame_id, func.max(QualityOverride.id).label("oid"))
                  .where(QualityOverride.frame_id.in_(batch)).group_by(QualityOverride.frame_id).subquery())
        for override in session.scalars(select(QualityOverride).join(latest, latest.c.oid == QualityOverride.id)):
            state = out[override.frame_id]
            state["verdict"] = "accepted" if override.verdict == "accept" else "rejected"
            state["by"] = "override"
            state["reasons"] = [f"{override.verdict}ed by {override.by_user or 'a person'}: {override.reason}"]
    return out


def lights_of(session: Session, product_ids: Iterable[int]) -> dict[int, int]:
    """registered or calibrated frame id -> the raw light it was made from (through the
    calibrate and register reductions' inputs)."""
    out: dict[int, int] = {}
    cal_in = aliased(ReductionInput)
    calibrated = aliased(Frame)
    light_in = aliased(ReductionInput)
    for batch in chunked(set(product_ids)):
        # calibrated frames: their calibration's light
        out.update(session.execute(
            select(Frame.id, light_in.frame_id).join(light_in, and_(light_in.reduction_id == Frame.reduction_id,
                                                                    light_in.role == "light"))
            .where(Frame.id.in_(batch))).all())
        # registered frames: their registration's input, then that calibration's light
        out.update(session.execute(
            select(Frame.id, light_in.frame_id)
            .join(cal_in, and_(cal_in.reduction_id == Frame.reduction_id, cal_in.role == "input"))
            .join(calibrated, calibrated.id == cal_in.frame_id)
            .join(light_in, and_(light_in.reduction_id == calibrated.reduction_id, light_in.role == "light"))
            .where(Frame.id.in_(batch))).all())
    return out


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


def quality_table(session: Session, filters: FrameFilter | None = None, *,
                  rules: QualityRules | None = None) -> pd.DataFrame:
    """``archive quality``: one row per frame with its current measurement, flags and
    verdict; rejected frames first (with their reasons), then by DATE-OBS.

    Frames of types never measured (calibrated, registered, stacked) are left out.
    """
    query = frame_query(filters, Frame).where(Frame.image_type.in_(MEASURED_TYPES))
    frames = list(session.scalars(query.order_by(Frame.date_obs_s, Frame.id)))
    return quality_rows(session, frames, rules=rules, among=query.with_only_columns(Frame.id))


def quality_rows(session: Session, frames: Sequence[Frame], *, rules: QualityRules | None = None,
                 among: Select | None = None, paths: Mapping[int, str] | None = None) -> pd.DataFrame:
    """:func:`quality_table` of frames the caller has already read.

    Parameters
    ----------
    frames : sequence of Frame
        Frames of the measured types, in the order wanted (rejected ones are moved first).
    among : Select, optional
        A statement selecting exactly the frames' ids (see :func:`verdicts`).
    paths : mapping, optional
        frame id -> its canonical path, when the caller has them (default: looked up).
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    measured = _current_measurements(session, [f.id for f in frames], version, among=among)
    states = verdicts(session, [f.id for f in frames], rules=rules, among=among)
    if paths is None:
        paths = canonical_paths(session, [f.id for f in frames])
    shown = ("background_adu", "noise_adu", "n_stars", "fwhm_px", "fwhm_arcsec", "eccentricity",
             "saturated_fraction", "weight", "read_noise_adu", "dark_current_adu_s", "hot_pixels", "flat_snr",
             "flat_falloff", "changed_fraction")
    rows = []
    for f in frames:
        m = measured.get(f.id)
        state = states[f.id]
        row: dict[str, Any] = {
            "frame_id": f.id, "verdict": state["verdict"], "by": state["by"], "reasons": "; ".join(state["reasons"]),
            "flags": "; ".join(state["flags"]), "image_type": f.image_type, "night": f.night, "target": f.target,
            "filter": f.filter_name, "date_obs": f.date_obs,
            "measured": (m.status if m is not None else None),
        }
        for column in shown:
            value = getattr(m, column) if m is not None else None
            row[column] = round(value, 4) if isinstance(value, float) else value
        row["path"] = paths.get(f.id)
        rows.append(row)
    columns = ["frame_id", "verdict", "by", "reasons", "flags", "image_type", "night", "target", "filter", "date_obs",
               "measured", *shown, "path"]
    import pandas as pd  # on use: 0.2 s of every measuring command's start otherwise

    table = pd.DataFrame(rows, columns=columns)
    for column in ("n_stars", "hot_pixels"):
        table[column] = table[column].astype("Int64")
    if not table.empty:
        table = table.assign(_order=(table["verdict"] != "rejected")).sort_values("_order", kind="stable")
        table = table.drop(columns="_order").reset_index(drop=True)
    return table


def rejected_frames(session: Session, *, rules: QualityRules | None = None, night: dt.date | None = None,
                    limit: int | None = None) -> pd.DataFrame:
    """The frames rejected by quality (their :func:`verdicts`: a person's reject, else a flag
    of the current rules with action ``reject``), newest first: what ``archive problems
    --quality`` and the web view's problems page list.

    Only frames that can be rejected are judged: those with an override, a stored reject flag
    of the current measurement version, or a measurement of that version not yet judged under
    the current rules (judged here, as :func:`verdicts` does).

    Parameters
    ----------
    rules : QualityRules, optional
    night : date, optional
        Only frames of this local observing night.
    limit : int, optional
        The newest ``limit`` (by DATE-OBS; default all).

    Returns
    -------
    DataFrame
        Columns: frame_id, night, date_obs, image_type, instrument, target, filter, by
        (``rules`` or ``override``), reasons, path.
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    flagged = (select(QualityFlag.frame_id).join(FrameMeasurement, FrameMeasurement.id == QualityFlag.measurement_id)
               .where(QualityFlag.action == "reject", FrameMeasurement.version == version))
    unjudged = select(FrameMeasurement.frame_id).where(
        FrameMeasurement.version == version, FrameMeasurement.status == "ok",
        or_(FrameMeasurement.judged_version.is_(None), FrameMeasurement.judged_version != rules.version))
    overridden = select(QualityOverride.frame_id)
    query = select(Frame.id).where(or_(Frame.id.in_(flagged), Frame.id.in_(unjudged), Frame.id.in_(overridden)))
    if night is not None:
        query = query.where(Frame.night == night)
    candidates = list(session.scalars(query))
    states = verdicts(session, candidates, rules=rules)
    rejected = [i for i in candidates if states[i]["verdict"] == "rejected"]
    frames = sorted((f for batch in chunked(rejected) for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))),
                    key=lambda f: (f.date_obs is not None, f.date_obs or dt.datetime.min, f.id), reverse=True)
    if limit is not None:
        frames = frames[:limit]
    names = {i: str(n) for i, n in instrument_names(session, [f.instrument_id for f in frames]).items()}
    paths = canonical_paths(session, [f.id for f in frames])
    rows = [(f.id, f.night, f.date_obs, f.image_type, names.get(f.instrument_id), f.target, f.filter_name,
             states[f.id]["by"], "; ".join(states[f.id]["reasons"]), paths.get(f.id)) for f in frames]
    import pandas as pd

    return pd.DataFrame(rows, columns=["frame_id", "night", "date_obs", "image_type", "instrument", "target", "filter",
                                       "by", "reasons", "path"])


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


def stack_exclusions(session: Session, registered_ids: Sequence[int], *,
                     rules: QualityRules | None = None) -> tuple[list[int], dict[int, str], dict[int, float | None]]:
    """Split a stack's registered frames by the verdicts of their lights.

    The lights' groups are judged first (flags written; the caller commits).

    Returns
    -------
    kept : list of int
        Registered frame ids whose light is accepted (or unmeasured), in the given order.
    rejected : dict
        light id -> reason, of the registered frames left out.
    weights : dict
        registered id -> the signal weight of its light's measurement (None unmeasured).
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    lights = lights_of(session, registered_ids)
    judge_frames(session, [lights[r] for r in registered_ids if r in lights], rules=rules)
    states = verdicts(session, lights.values(), rules=rules)
    measured = _current_measurements(session, lights.values(), version)
    kept, rejected, weights = [], {}, {}
    for rid in registered_ids:
        light = lights.get(rid)
        if light is not None and states[light]["verdict"] == "rejected":
            rejected[light] = "; ".join(states[light]["reasons"])
            continue
        kept.append(rid)
        weights[rid] = measured[light].weight if light in measured else None
    return kept, rejected, weights



@dataclass
class QualityStale:
    """A stack whose membership would change under the current verdicts.

    Attributes
    ----------
    frame_id : int
        The stacked frame.
    light_id : int
        A light of its group (reducing it again makes the group's stack again).
    reasons : list of str
    """

    frame_id: int
    light_id: int
    reasons: list[str]


def stale_stacks(session: Session, *, rules: QualityRules | None = None) -> list[QualityStale]:
    """The newest stack of each group (``parameters['group_key']``) whose inputs' lights are now
    rejected, or that left out lights now accepted (an override, a rules change, a new
    measurement), or whose lights were measured under another version than the current one.

    Returns
    -------
    list of QualityStale
        By stacked frame id.
    """
    rules = rules or load_quality_rules()
    latest: dict[str, tuple[int, dict, int]] = {}
    rows = session.execute(select(Reduction.id, Reduction.parameters, Frame.id)
                           .join(Frame, Frame.reduction_id == Reduction.id)
                           .where(Reduction.step == "stack", Reduction.status == "done").order_by(Reduction.id))
    for rid, params, frame_id in rows:
        key = (params or {}).get("group_key")
        if key:
            latest[key] = (rid, params or {}, frame_id)
    out: list[QualityStale] = []
    for rid, params, frame_id in latest.values():
        inputs = list(session.scalars(select(ReductionInput.frame_id).where(
            ReductionInput.reduction_id == rid, ReductionInput.role == "input")))
        lights = sorted(set(lights_of(session, inputs).values()))
        left_out = sorted(int(k) for k in params.get("rejected", {}))
        states = verdicts(session, lights + left_out, rules=rules)
        reasons = []
        for light in lights:
            state = states[light]
            if state["verdict"] == "rejected":
                reasons.append(f"light #{light} now rejected ({'; '.join(state['reasons'])})")
            elif state["other_version"]:
                reasons.append(f"light #{light} measured under version {state['other_version']}, not "
                               f"{measurement_version(rules.measure.get('version', '1'))}: measure again")
        for light in left_out:
            if states[light]["verdict"] == "accepted":
                why = "; ".join(states[light]["reasons"]) or "no rule rejects it now"
                reasons.append(f"light #{light}, left out, now accepted ({why})")
        if reasons and (lights or left_out):
            out.append(QualityStale(frame_id, (lights or left_out)[0], reasons))
    return sorted(out, key=lambda s: s.frame_id)
