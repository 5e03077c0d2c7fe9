"""Listing frames and summarizing the catalogue, as DataFrames (the filters are
:mod:`archive.db.frames`'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive.db.frames import FrameFilter, canonical_path_column, current_copies_column, frame_query
from archive.db.models import Copy, Frame, IngestProblem, Instrument

if TYPE_CHECKING:
    import pandas as pd


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
        current_copies_column().label("copies"), Frame.duplicate_of_id, canonical_path_column().label("path"),
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
