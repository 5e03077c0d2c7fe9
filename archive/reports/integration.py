"""Integration of raw lights per target, filter and night, accepted against total: what the
web view's target and night pages show (the sums are :func:`archive.reduce.integration.integrate`'s,
the verdicts :func:`archive.reduce.quality.verdicts`, the one rule of what is rejected)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from archive.db.frames import FrameFilter, frame_query, target_key
from archive.db.models import Frame
from archive.reduce.integration import integrate, rejected_ids
from archive.reduce.quality import verdicts

_KEYS = ("target", "filter_name", "night")


def light_integration(session: Session, *, night: dt.date | None = None, target: str | None = None,
                      by: tuple[str, ...] = _KEYS) -> list[dict[str, Any]]:
    """Raw lights (one per exposure: duplicates left out) grouped by ``by``, with their
    integration, accepted against total.

    Parameters
    ----------
    night : date, optional
        Only this local observing night.
    target : str, optional
        Only this target, matched by its folded name (``target_key``: 'M 31' is 'm31'); no
        catalogue resolution, so a page for a target lists the frames of that name.
    by : tuple of str
        Grouping keys among target, filter_name, night.

    Returns
    -------
    list of dict
        One per group, ordered by the keys: the keys, ``frames``, ``exposure_s`` (total, s),
        ``accepted`` (frames whose verdict is not ``rejected``), ``accepted_s`` (their exposure,
        s) and ``rejected``. A frame without EXPTIME adds nothing to the times.

    Raises
    ------
    ValueError
        An unknown grouping key.
    """
    unknown = [k for k in by if k not in _KEYS]
    if unknown:
        raise ValueError(f"unknown grouping key(s) {unknown}; choose from {list(_KEYS)}")
    query = frame_query(FrameFilter(image_type="light", night=night, include_duplicates=False),
                        Frame.id, Frame.target, Frame.filter_name, Frame.night, Frame.exposure_time_s)
    if target is not None:
        query = query.where(Frame.target_key == target_key(target))
    rows = session.execute(query).all()
    judged = verdicts(session, [r.id for r in rows], among=query.with_only_columns(Frame.id))
    groups = integrate(rows, rejected_ids(judged), key=lambda r: tuple(getattr(r, k) for k in by))
    return [{**dict(zip(by, key)), **groups[key]}
            for key in sorted(groups, key=lambda key: tuple((v is None, v if v is not None else "") for v in key))]
