"""What one observing night holds, as the night report asks it (:mod:`archive.reports.night`):
its frames in time order, the products made from them, and the masters chosen for its lights."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased, defer

from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, frame_query
from archive.db.models import CalibrationSelection, Frame, Master, ReductionInput


def frames_of_night(session: Session, night: dt.date, image_type: str | None = None) -> list[Frame]:
    """The frames of ``night`` (optionally of one image type), by DATE-OBS then id; their
    headers are read when first asked for (a night's report reads none of its lights')."""
    query = (frame_query(FrameFilter(night=night, image_type=image_type)).order_by(Frame.date_obs_s, Frame.id)
             .options(defer(Frame.header)))
    return list(session.scalars(query))


def frames_by_id(session: Session, frame_ids: Iterable[int]) -> dict[int, Frame]:
    """frame id -> Frame, of those of ``frame_ids`` in the catalogue."""
    return {f.id: f for batch in chunked({int(i) for i in frame_ids})
            for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))}


def derived_from_night(session: Session, night: dt.date, image_types: Sequence[str]) -> list[Frame]:
    """Derived frames of ``image_types`` whose reduction had an input frame of ``night`` (the
    masters built from its calibrations, the stacks of its lights), by type then id."""
    # from the night's frames to their reductions to what those made (ix_frames_products),
    # not every product of the catalogue tested against the night (SQLite: 30-45 ms on 24,000 masters)
    source = aliased(Frame)
    of_night = (select(ReductionInput.reduction_id).join(source, source.id == ReductionInput.frame_id)
                .where(source.night == night))
    query = (select(Frame).where(Frame.image_type.in_(tuple(image_types)), Frame.reduction_id.in_(of_night))
             .order_by(Frame.image_type, Frame.id))
    return list(session.scalars(query))


def master_rows(session: Session, frame_ids: Iterable[int]) -> dict[int, Master]:
    """frame id -> its row of the master library, for the masters among ``frame_ids``."""
    return {m.frame_id: m for batch in chunked(set(frame_ids))
            for m in session.scalars(select(Master).where(Master.frame_id.in_(batch)))}


def latest_selections(session: Session, frame_ids: Iterable[int] | Select) -> dict[tuple[int, str], CalibrationSelection]:
    """(frame id, kind) -> the latest recorded master choice for the frame (by decision time, then id).

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int, or Select
        The frames, or a statement selecting exactly their ids (one column): then one
        statement, not ``IN`` lists of the ids (a night's thousand lights: a thousand bound
        values that PostgreSQL and psycopg handle slowly).

    Returns
    -------
    dict
        The choices' ``candidates`` and ``detail`` are read when first asked for.
    """
    latest: dict[tuple[int, str], CalibrationSelection] = {}
    batches = [frame_ids] if isinstance(frame_ids, Select) else chunked(set(frame_ids))
    for batch in batches:
        for sel in session.scalars(select(CalibrationSelection).where(CalibrationSelection.frame_id.in_(batch))
                                   .order_by(CalibrationSelection.decided_at, CalibrationSelection.id)
                                   .options(defer(CalibrationSelection.candidates), defer(CalibrationSelection.detail))):
            latest[(sel.frame_id, sel.kind)] = sel
    return latest
