"""Reductions that did not make their product: failures (a step that broke) and rejections (a
frame judged unusable), kept queryable after later runs (``shared/DESIGN.md``, "Judgement")."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from archive.db.frames import canonical_paths
from archive.db.models import Frame, Reduction, ReductionInput

if TYPE_CHECKING:
    import pandas as pd

#: The input role that names the frame a reduction was about (a light, a calibrated frame).
_SUBJECT_ROLES = ("light", "input")


#: The input roles that make a reduction one of a night's (:func:`list_reduction_problems`):
#: its subject and the raw frames of a master, not the masters or the reference it used.
_NIGHT_ROLES = ("raw", "light", "input")


def list_reduction_problems(session: Session, *, status: str | None = None,
                            night: dt.date | None = None,
                            limit: int | None = None) -> pd.DataFrame:
    """Failed and rejected reductions that nothing has made good since, newest first.

    A failure or rejection is left out once a later reduction of the same step on the same
    frame is done (a failed calibration redone, a frame registered after a new reference).

    Parameters
    ----------
    status : {'failed', 'rejected'}, optional
        Only failures or only rejections.
    night : date, optional
        Only the reductions of frames of this observing night: a raw frame, light or input
        frame of the night among their inputs (a master built from the night's calibrations,
        a light of the night calibrated, registered or stacked).
    limit : int, optional
        Only the newest ``limit`` rows (default all).

    Returns
    -------
    DataFrame
        Columns: step, status, kind (``failure_kind``), frame_id (the light or calibrated
        frame; empty for a master build), path (its file), reason, finished_at, reduction_id.
    """
    later = aliased(Reduction)
    later_input = aliased(ReductionInput)
    made_good = exists(
        select(later.id).join(later_input, later_input.reduction_id == later.id).where(
            later.step == Reduction.step, later.status == "done", later.id > Reduction.id,
            later_input.frame_id == ReductionInput.frame_id, later_input.role == ReductionInput.role))
    query = (
        select(Reduction.id, Reduction.step, Reduction.status, Reduction.failure_kind, Reduction.message,
               Reduction.finished_at, ReductionInput.frame_id)
        .outerjoin(ReductionInput, and_(ReductionInput.reduction_id == Reduction.id,
                                        ReductionInput.role.in_(_SUBJECT_ROLES)))
        .where(Reduction.status.in_((status,) if status else ("failed", "rejected")), ~made_good)
        .order_by(Reduction.finished_at.desc(), Reduction.id.desc())
    )
    if night is not None:
        of_night = aliased(ReductionInput)
        query = query.where(exists(
            select(of_night.frame_id).join(Frame, Frame.id == of_night.frame_id)
            .where(of_night.reduction_id == Reduction.id, of_night.role.in_(_NIGHT_ROLES), Frame.night == night)))
    if limit is not None:
        query = query.limit(limit)
    rows = session.execute(query).all()
    paths = canonical_paths(session, {r.frame_id for r in rows if r.frame_id is not None})
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(
        [(r.step, r.status, r.failure_kind, r.frame_id, paths.get(r.frame_id), r.message, r.finished_at, r.id)
         for r in rows],
        columns=["step", "status", "kind", "frame_id", "path", "reason", "finished_at", "reduction_id"],
    )
