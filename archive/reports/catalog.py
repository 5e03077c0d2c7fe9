"""Listing frames and summarizing the catalogue, as DataFrames (the filters are
:mod:`archive.db.frames`'s)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from archive.db.frames import FrameFilter, canonical_path_column, current_copies_column, folder_prefix, frame_query
from archive.db.models import DERIVED_TYPES, Copy, Frame, IngestProblem, Instrument

if TYPE_CHECKING:
    import pandas as pd


def frame_rows(session: Session, filters: FrameFilter | None = None) -> tuple[list[str], list[tuple]]:
    """The frames matching ``filters``, one row each, ordered by DATE-OBS, as (columns, rows).

    The columns are those of :func:`select_frames`; values are as stored (no pandas involved,
    so the command line starts quickly).
    """
    query = frame_query(
        filters,
        Frame.id, Frame.night, Frame.date_obs, Frame.image_type, Frame.target, Frame.filter_name,
        Frame.exposure_time_s, Frame.binning_x, Frame.binning_y, Frame.ccd_temp_c, Frame.set_temp_c,
        Frame.gain, Frame.offset, Instrument.name.label("instrument"), Frame.naxis1, Frame.naxis2,
        current_copies_column().label("copies"), Frame.duplicate_of_id, canonical_path_column().label("path"),
    ).order_by(Frame.date_obs, Frame.id)
    return list(query.selected_columns.keys()), [tuple(row) for row in session.execute(query)]


def select_frames(session: Session, filters: FrameFilter | None = None) -> pd.DataFrame:
    """The frames matching ``filters``, one row each, ordered by DATE-OBS.

    Returns
    -------
    DataFrame
        Columns: id, night, date_obs (UTC), image_type, target, filter_name, exposure_time_s,
        binning_x, binning_y, ccd_temp_c, set_temp_c, gain, offset, instrument, naxis1, naxis2,
        copies (current files), duplicate_of_id, path (the canonical copy).
    """
    columns, rows = frame_rows(session, filters)
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=columns)


SUMMARY_KEYS = {
    "night": Frame.night,
    "image_type": Frame.image_type,
    "filter_name": Frame.filter_name,
    "exposure_time_s": Frame.exposure_time_s,
    "instrument": Instrument.name,
    "target": Frame.target,
}

#: What a summary counts: raw frames (what the camera took) or the products made from them.
SUMMARY_LEVELS = ("raw", "products")


def stack_exposure_s(header: str, exposure_time_s: float | None) -> float | None:
    """The total exposure of a stack (s): its ``TOTEXP`` card (configs/keywords.toml
    ``total_exposure``), else ``NCOMBINE`` times the one-frame exposure, else that exposure.

    Parameters
    ----------
    header : str
        The stored header (cards joined by newlines).
    exposure_time_s : float or None
        The frame's normalized exposure time (one input frame's, for a stack).
    """
    from archive import keywords as kw
    from archive.ingest.cards import CardIndex  # imported on use: only stacks need it

    cards = CardIndex("".join(line[:80].ljust(80) for line in (header or "").split("\n")))
    total, count = cards.get(kw.TOTAL_EXPOSURE), cards.get(kw.NCOMBINE)
    if isinstance(total, (int, float)) and not isinstance(total, bool) and total >= 0:
        return float(total)
    if exposure_time_s is not None and isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return exposure_time_s * count
    return exposure_time_s


def summary_rows(
    session: Session, by: Sequence[str] = ("night", "image_type", "filter_name", "exposure_time_s"),
    filters: FrameFilter | None = None, *, level: str = "raw",
) -> tuple[list[str], list[tuple]]:
    """Counts and total exposure grouped by ``by``, as (columns, rows); see :func:`summarize`."""
    unknown = [k for k in by if k not in SUMMARY_KEYS]
    if unknown:
        raise ValueError(f"unknown summary key(s) {unknown}; choose from {sorted(SUMMARY_KEYS)}")
    if level not in SUMMARY_LEVELS:
        raise ValueError(f"level must be one of {SUMMARY_LEVELS}, not {level!r}")
    keys = [SUMMARY_KEYS[k].label(k) for k in by]
    query = frame_query(filters, Frame.id.label("frame_id"), Frame.exposure_time_s.label("exp"),
                        Frame.image_type.label("type_"), Frame.duplicate_of_id.label("dup"), *keys)
    if not (filters and filters.image_type):
        derived = Frame.image_type.in_(DERIVED_TYPES)
        query = query.where(derived if level == "products" else or_(Frame.image_type.is_(None), ~derived))
    inner = query.subquery()
    files = select(func.count(Copy.id)).where(Copy.frame_id == inner.c.frame_id, Copy.is_current).scalar_subquery()
    per_frame = select(inner, files.label("files")).subquery()
    group = [per_frame.c[k] for k in by]
    counted = per_frame.c.dup.is_(None)  # one frame per exposure: duplicates are listed apart
    stacked = per_frame.c.type_ == "stacked"
    query = (
        select(*group, func.count(case((counted, 1))).label("frames"), func.sum(per_frame.c.files).label("files"),
               func.sum(case((and_(counted, or_(per_frame.c.type_.is_(None), ~stacked)), per_frame.c.exp)))
               .label("exposure_s"),
               func.count(per_frame.c.dup).label("duplicates"))
        .group_by(*group)
        .order_by(*group)
    )
    totals = {tuple(row[: len(by)]): list(row[len(by):]) for row in session.execute(query)}
    # a stack's exposure is its total exposure, written in its header, not one input's EXPTIME
    stacks = select(Frame.header, *[per_frame.c[k] for k in ("exp", *by)]).join(
        per_frame, Frame.id == per_frame.c.frame_id).where(stacked, counted)
    for header, exp, *key in session.execute(stacks):
        total = stack_exposure_s(header, exp)
        if total is not None:
            row = totals[tuple(key)]
            row[2] = (row[2] or 0.0) + total
    rows = [(*key, frames, int(n_files or 0), None if exposure is None else float(exposure) / 3600.0, duplicates)
            for key, (frames, n_files, exposure, duplicates) in totals.items()]
    return [*by, "frames", "files", "exposure_h", "duplicates"], rows


def summarize(
    session: Session, by: Sequence[str] = ("night", "image_type", "filter_name", "exposure_time_s"),
    filters: FrameFilter | None = None, *, level: str = "raw",
) -> pd.DataFrame:
    """Counts and total exposure grouped by ``by``.

    Parameters
    ----------
    by : sequence of str
        Grouping keys among night, image_type, filter_name, exposure_time_s, instrument, target.
    filters : FrameFilter, optional
    level : {'raw', 'products'}
        Count raw frames (what the camera took; default) or the products made from them
        (masters, calibrated, registered and stacked frames). Ignored when ``filters`` names
        an image type: then that type is counted.

    Returns
    -------
    DataFrame
        The keys, then ``frames`` (exposures: distinct images, duplicate exposures counted
        once), ``files`` (current copies on disk, duplicates' included), ``exposure_h`` (total
        exposure of the counted frames, hours; a stack counts its total exposure, see
        :func:`stack_exposure_s`) and ``duplicates`` (frames flagged as duplicate exposures
        of a counted frame).

    Raises
    ------
    ValueError
        An unknown grouping key or level.
    """
    columns, rows = summary_rows(session, by, filters, level=level)
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=columns)


def problem_rows(session: Session, *, include_resolved: bool = False, severity: str | None = None,
                 night: dt.date | None = None, under: Sequence[str | Path] = (),
                 limit: int | None = None) -> tuple[list[str], list[tuple]]:
    """Ingest problems as (columns, rows), the newest ``limit`` (default all); see :func:`list_problems`."""
    query = select(
        IngestProblem.path, IngestProblem.severity, IngestProblem.reason, IngestProblem.created_at,
        IngestProblem.run_id,
    ).order_by(IngestProblem.created_at.desc(), IngestProblem.id.desc())
    if not include_resolved:
        query = query.where(~IngestProblem.resolved)
    if severity:
        query = query.where(IngestProblem.severity == severity)
    if night is not None:
        runs = select(Frame.run_id).where(Frame.night == night, Frame.run_id.is_not(None))
        query = query.where(or_(IngestProblem.run_id.in_(runs),
                                *(IngestProblem.path.startswith(folder_prefix(f), autoescape=True) for f in under)))
    if limit is not None:
        query = query.limit(limit)
    return ["path", "severity", "reason", "created_at", "run_id"], [tuple(r) for r in session.execute(query)]


def list_problems(session: Session, *, include_resolved: bool = False, severity: str | None = None,
                  night: dt.date | None = None, under: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Ingest problems, newest first: path, severity, reason, when, run.

    Parameters
    ----------
    include_resolved : bool
        Also list errors of files that a later ingest read successfully.
    severity : {'error', 'warning'}, optional
        Only this severity.
    night : date, optional
        Only the problems of the ingest runs that catalogued frames of this observing night,
        and of the folders ``under``.
    under : sequence of str or Path
        With ``night``: folders whose problems are the night's too, even from a run that
        catalogued none of its frames (a folder holding only unreadable files).
    """
    columns, rows = problem_rows(session, include_resolved=include_resolved, severity=severity, night=night,
                                 under=under)
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=columns)
