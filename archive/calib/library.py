"""Keeping the master library: its folder, bad flags, validity, and the library as a table.

Masters made elsewhere join the library when they are ingested
(:func:`archive.ingest.library.sync_library`); masters built here join it when they are
recorded (:mod:`archive.calib.masters`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive.config import Settings, data_home, load_settings
from archive.db.models import Frame, Instrument, Master
from archive.errors import CalibrationNotFoundError
from archive.db.frames import canonical_path_column

log = logging.getLogger(__name__)


#: Where a master file goes below the library folder (every field a safe path component).
LIBRARY_LAYOUT = "{instrument}/{kind}/{name}"


def default_library(settings: Settings | None = None) -> Path:
    """The library folder.

    Parameters
    ----------
    settings : Settings, optional
        Default :func:`archive.config.load_settings`.

    Returns
    -------
    Path
        ``[masters] library`` of the configuration, else :func:`archive.config.data_home` /
        ``masters`` (``~/.local/share/archive/masters``).
    """
    settings = settings or load_settings()
    configured = settings.raw.get("masters", {}).get("library")
    if configured:
        return Path(configured).expanduser()
    return data_home() / "masters"


# -- the library: external masters, bad flags, validity -------------------------------------------


def _master_row(session: Session, frame_id: int) -> Master:
    master = session.get(Master, frame_id)
    if master is None:
        raise CalibrationNotFoundError(f"frame {frame_id} is not a master of the library")
    return master


def mark_bad(session: Session, frame_ids: Sequence[int], reason: str | None = None, *, bad: bool = True) -> list[Master]:
    """Flag masters bad (never selected again) or, with ``bad=False``, good again.

    Parameters
    ----------
    session : Session
        Written to (flushed, not committed).
    frame_ids : sequence of int
        The masters' frame ids.
    reason : str, optional
        Why, stored with the flag (cleared with ``bad=False``).
    bad : bool
        True (default) to flag, False to clear the flag.

    Returns
    -------
    list of Master
        The rows changed.

    Raises
    ------
    CalibrationNotFoundError
        A frame id is not a master of the library.
    """
    masters = [_master_row(session, fid) for fid in frame_ids]
    for master in masters:
        master.is_bad, master.bad_reason = bad, (reason if bad else None)
    session.flush()
    return masters


def set_validity(session: Session, frame_id: int, valid_from: dt.datetime | None, valid_until: dt.datetime | None) -> Master:
    """Set the range ``[valid_from, valid_until)`` (UTC; ``None``: open) in which a master may be used.

    Parameters
    ----------
    session : Session
        Written to (flushed, not committed).
    frame_id : int
        The master's frame id.
    valid_from, valid_until : datetime or None
        Naive UTC bounds; the frame's DATE-OBS must be ``>= valid_from`` and ``< valid_until``.

    Returns
    -------
    Master
        The row changed.

    Raises
    ------
    CalibrationNotFoundError
        Not a master of the library.
    ValueError
        ``valid_from`` is not before ``valid_until``.
    """
    if valid_from is not None and valid_until is not None and valid_from >= valid_until:
        raise ValueError(f"valid_from {valid_from} is not before valid_until {valid_until}")
    master = _master_row(session, frame_id)
    master.valid_from, master.valid_until = valid_from, valid_until
    session.flush()
    return master


def library_table(session: Session, kind: str | None = None, *, include_bad: bool = True,
                  newest: int | None = None) -> pd.DataFrame:
    """The masters of the library, one row each, ordered by kind and DATE-OBS.

    Parameters
    ----------
    session : Session
    kind : {'bias', 'dark', 'flat'}, optional
        Only this kind (default all).
    include_bad : bool
        Include masters flagged bad (default True).
    newest : int, optional
        Only the ``newest`` masters by DATE-OBS (default all), still ordered by kind and DATE-OBS.

    Returns
    -------
    DataFrame
        Columns: frame_id, kind, origin, instrument, night, date_obs (UTC), exposure_time_s (s),
        filter_name, binning_x, set_temp_c (deg C), n_combined, combine_method, bias_subtracted, is_bad,
        bad_reason, valid_from, valid_until, rule_version, reduction_id, path.
    """
    path = canonical_path_column()
    query = (
        select(Master.frame_id, Master.kind, Master.origin, Instrument.name.label("instrument"), Frame.night,
               Frame.date_obs, Frame.exposure_time_s, Frame.filter_name, Frame.binning_x, Frame.set_temp_c,
               Master.n_combined, Master.combine_method, Master.bias_subtracted, Master.is_bad, Master.bad_reason,
               Master.valid_from, Master.valid_until, Master.rule_version, Frame.reduction_id, path.label("path"))
        .join(Frame, Frame.id == Master.frame_id).outerjoin(Instrument, Instrument.id == Frame.instrument_id)
        .order_by(Master.kind, Frame.date_obs, Frame.id)
    )
    if kind:
        query = query.where(Master.kind == kind)
    if not include_bad:
        query = query.where(~Master.is_bad)
    if newest is not None:
        # the newest masters first (a subquery), then their paths: the path of every master
        # would otherwise be looked up before the sort keeps ``newest`` of them
        chosen = select(Master.frame_id).join(Frame, Frame.id == Master.frame_id)
        if kind:
            chosen = chosen.where(Master.kind == kind)
        if not include_bad:
            chosen = chosen.where(~Master.is_bad)
        chosen = chosen.order_by(Frame.date_obs.desc(), Frame.id.desc()).limit(newest).subquery()
        query = query.join(chosen, chosen.c.frame_id == Master.frame_id)
    rows = session.execute(query).all()
    if newest is not None:
        rows.sort(key=lambda r: (r.kind, r.date_obs is None, r.date_obs or dt.datetime.min, r.frame_id))
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=list(query.selected_columns.keys()))


def library_state(session: Session) -> tuple[int, int]:
    """A token that changes when the usable master library changes: how many masters are not
    marked bad, and the largest frame id among them (a master added, removed, marked bad or
    good again). ``archive watch`` compares it to try again the lights that lacked a master."""
    count, newest = session.execute(select(func.count(), func.max(Master.frame_id)).where(~Master.is_bad)).one()
    return int(count or 0), int(newest or 0)
