"""Selecting frames and summarizing the catalogue, as DataFrames.

:func:`frame_query` is the one place the usual filters (type, filter, night, target,
instrument, time range, exposure range) become SQL; the CLI, the reports and the later
steps (masters, copyback, projects) build on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from archive.db.models import Copy, Frame, IngestProblem, Instrument
from archive.ingest.dialects import target_key

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FrameFilter:
    """The usual frame filters; ``None`` means no constraint.

    Attributes
    ----------
    image_type : str
        Normalized type (bias, dark, flat, light, dark_flat, arc, master_*, ...).
    filter_name : str
        Filter, compared case-insensitively.
    night : date
        Local observing night.
    target : str
        Target, matched loosely ('M 31' matches 'M31' and 'm31').
    instrument : str
        Instrument name, exact.
    since, until : datetime
        ``since <= date_obs < until`` (UTC).
    min_exposure_s, max_exposure_s : float
        Exposure time range in s, inclusive.
    include_duplicates : bool
        Keep frames flagged as duplicate exposures (default True).
    """

    image_type: str | None = None
    filter_name: str | None = None
    night: dt.date | None = None
    target: str | None = None
    instrument: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_exposure_s: float | None = None
    max_exposure_s: float | None = None
    include_duplicates: bool = True


def frame_query(filters: FrameFilter | None = None, *columns) -> Select:
    """A ``SELECT`` of ``columns`` (default the :class:`Frame` entity) over frames, with filters."""
    f = filters or FrameFilter()
    query = select(*(columns or (Frame,))).select_from(Frame).outerjoin(Instrument, Frame.instrument_id == Instrument.id)
    conditions = []
    if f.image_type:
        conditions.append(Frame.image_type == f.image_type)
    if f.filter_name:
        conditions.append(func.lower(Frame.filter_name) == f.filter_name.lower())
    if f.night:
        conditions.append(Frame.night == f.night)
    if f.target:
        conditions.append(Frame.target_key == target_key(f.target))
    if f.instrument:
        conditions.append(Instrument.name == f.instrument)
    if f.since:
        conditions.append(Frame.date_obs >= f.since)
    if f.until:
        conditions.append(Frame.date_obs < f.until)
    if f.min_exposure_s is not None:
        conditions.append(Frame.exposure_time_s >= f.min_exposure_s)
    if f.max_exposure_s is not None:
        conditions.append(Frame.exposure_time_s <= f.max_exposure_s)
    if not f.include_duplicates:
        conditions.append(Frame.duplicate_of_id.is_(None))
    return query.where(and_(*conditions)) if conditions else query


def _canonical_path():
    return (
        select(Copy.path)
        .where(Copy.frame_id == Frame.id, Copy.is_current, Copy.is_canonical)
        .limit(1)
        .scalar_subquery()
    )


def _current_copies():
    return select(func.count(Copy.id)).where(Copy.frame_id == Frame.id, Copy.is_current).scalar_subquery()


def select_frames(session: Session, filters: FrameFilter | None = None) -> pd.DataFrame:
    """The frames matching ``filters``, one row each, ordered by DATE-OBS.

    Returns
    -------
    DataFrame
        Columns: id, night, date_obs (UTC), image_type, target, filter_name, exposure_time_s,
        binning_x, binning_y, ccd_temp_c, set_temp_c, gain, offset, instrument, naxis1, naxis2,
        copies (current files), duplicate_of_id, path (the canonical copy).
    """
    query = frame_query(
        filters,
        Frame.id, Frame.night, Frame.date_obs, Frame.image_type, Frame.target, Frame.filter_name,
        Frame.exposure_time_s, Frame.binning_x, Frame.binning_y, Frame.ccd_temp_c, Frame.set_temp_c,
        Frame.gain, Frame.offset, Instrument.name.label("instrument"), Frame.naxis1, Frame.naxis2,
        _current_copies().label("copies"), Frame.duplicate_of_id, _canonical_path().label("path"),
    ).order_by(Frame.date_obs, Frame.id)
    rows = session.execute(query).all()
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=list(query.selected_columns.keys()))


SUMMARY_KEYS = {
    "night": Frame.night,
    "image_type": Frame.image_type,
    "filter_name": Frame.filter_name,
    "exposure_time_s": Frame.exposure_time_s,
    "instrument": Instrument.name,
    "target": Frame.target,
}


def summarize(
    session: Session, by: Sequence[str] = ("night", "image_type", "filter_name", "exposure_time_s"),
    filters: FrameFilter | None = None,
) -> pd.DataFrame:
    """Counts and total exposure grouped by ``by``.

    Parameters
    ----------
    by : sequence of str
        Grouping keys among night, image_type, filter_name, exposure_time_s, instrument, target.

    Returns
    -------
    DataFrame
        The keys, then ``frames`` (distinct images), ``files`` (current copies on disk) and
        ``exposure_h`` (total exposure of the frames, hours).

    Raises
    ------
    ValueError
        An unknown grouping key.
    """
    unknown = [k for k in by if k not in SUMMARY_KEYS]
    if unknown:
        raise ValueError(f"unknown summary key(s) {unknown}; choose from {sorted(SUMMARY_KEYS)}")
    keys = [SUMMARY_KEYS[k].label(k) for k in by]
    inner = frame_query(filters, Frame.id.label("frame_id"), Frame.exposure_time_s.label("exp"), *keys).subquery()
    files = select(func.count(Copy.id)).where(Copy.frame_id == inner.c.frame_id, Copy.is_current).scalar_subquery()
    per_frame = select(inner, files.label("files")).subquery()
    group = [per_frame.c[k] for k in by]
    query = (
        select(*group, func.count().label("frames"), func.sum(per_frame.c.files).label("files"),
               func.sum(per_frame.c.exp).label("exposure_s"))
        .group_by(*group)
        .order_by(*group)
    )
    import pandas as pd  # imported on use: a slow import

    frame = pd.DataFrame(session.execute(query).all(), columns=[*by, "frames", "files", "exposure_s"])
    frame["exposure_h"] = (frame.pop("exposure_s").astype(float) / 3600.0).round(3)
    frame["files"] = frame["files"].astype(int)
    return frame


def list_problems(session: Session, *, include_resolved: bool = False, severity: str | None = None) -> pd.DataFrame:
    """Ingest problems, newest first: path, severity, reason, when, run.

    Parameters
    ----------
    include_resolved : bool
        Also list errors of files that a later ingest read successfully.
    severity : {'error', 'warning'}, optional
        Only this severity.
    """
    query = select(
        IngestProblem.path, IngestProblem.severity, IngestProblem.reason, IngestProblem.created_at,
        IngestProblem.run_id,
    ).order_by(IngestProblem.created_at.desc(), IngestProblem.id.desc())
    if not include_resolved:
        query = query.where(~IngestProblem.resolved)
    if severity:
        query = query.where(IngestProblem.severity == severity)
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(session.execute(query).all(), columns=["path", "severity", "reason", "created_at", "run_id"])
