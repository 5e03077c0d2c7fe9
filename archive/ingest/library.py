"""Masters made elsewhere join the master library when they are ingested."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive import keywords as kw
from archive.db.base import utcnow
from archive.db.models import MASTER_TYPES, Frame, Master
from archive.ingest.cards import CARD, CardIndex

log = logging.getLogger(__name__)


def _count(value: object) -> int | None:
    """NCOMBINE as a count, or None when it is not a whole number that fits a column."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number != int(number) or not 0 < number < 2**31:
        return None
    return int(number)


def _value(header: CardIndex, key: str, frame_id: int) -> object:
    """The value of ``key``, or None (with a log line) when its card cannot be parsed."""
    try:
        return header.get(key)
    except ValueError as exc:
        log.warning("master frame %d: %s: %s; stored as unknown", frame_id, key, exc)
        return None


def sync_library(session: Session, frame_ids: Sequence[int] | None = None) -> int:
    """Give ingested master frames without a library row one (masters made elsewhere).

    Ingest calls it for the master frames it adds; a master build for any that an earlier
    version left. Frames of type ``master_bias|dark|flat|dark_model|badpix`` (PixInsight, Siril and other
    programs: IMAGETYP 'Master Dark' and similar, recognized at ingest) join the library with
    ``origin = 'external'``; the number combined comes from the header's
    :data:`archive.keywords.NCOMBINE` (NULL, with a log line, when it is not a count). External
    darks are taken as not bias-subtracted (never scaled) unless their header says so with
    :data:`archive.keywords.BIAS_SUBTRACTED`.

    Parameters
    ----------
    session : Session
        Written to (flushed, not committed).
    frame_ids : sequence of int, optional
        Only these frames (default every master frame of the catalogue).

    Returns
    -------
    int
        Masters added.
    """
    query = (
        select(Frame).outerjoin(Master, Master.frame_id == Frame.id)
        .where(Frame.image_type.in_(MASTER_TYPES), Master.frame_id.is_(None),
               Frame.duplicate_of_id.is_(None))
    )
    if frame_ids is not None:
        query = query.where(Frame.id.in_(frame_ids))
    frames = session.scalars(query).all()
    now = utcnow()
    for frame in frames:
        header = CardIndex("".join(line.ljust(CARD) for line in frame.header.split("\n")))
        raw = _value(header, kw.NCOMBINE, frame.id)
        n = _count(raw)
        if raw is not None and n is None:
            log.warning("master frame %d: %s=%r is not a count; stored as unknown", frame.id, kw.NCOMBINE, raw)
        session.add(Master(
            frame_id=frame.id, kind=frame.image_type.removeprefix("master_"), origin="external", n_combined=n,
            combine_method=None, bias_subtracted=bool(_value(header, kw.BIAS_SUBTRACTED, frame.id)),
            is_bad=False, created_at=now, rule_version=None,
        ))
    session.flush()
    return len(frames)
