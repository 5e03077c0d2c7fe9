"""Pruned products: copies of derived frames deleted to give back disk space, rows kept.

A copy deleted by ``archive prune`` stays in ``copies`` as history: ``is_current`` and
``is_canonical`` false, ``pruned_at`` set (migration ``0011_prune``). A product frame with a
pruned copy and no current copy is *pruned*; the reduction that made it then counts as not
done (:func:`pruned_condition`), so asking for it again remakes it, and the new file becomes
a new current copy of the same frame (same bytes) or a new frame of the same reduction.

Only products that can be remade are offered (:func:`prunable_copies`): made by a ``done``
reduction that lists its inputs, every input still on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, folder_prefix, frame_query
from archive.db.models import DERIVED_TYPES, Copy, Frame, Reduction, ReductionInput

#: What ``archive prune`` deletes unless told otherwise: the intermediate products.
DEFAULT_KINDS = ("calibrated", "registered")
#: What it may delete when asked by name (``--kind``): every derived type; never a raw one.
PRUNABLE_KINDS = DERIVED_TYPES


@dataclass(frozen=True)
class PrunableCopy:
    """A current copy of a product that can be remade from its provenance.

    Attributes
    ----------
    copy_id, frame_id, reduction_id : int
    path : str
    size : int
        Bytes, as catalogued.
    mtime_ns : int
    sha256 : str
        Of the file's bytes, as catalogued.
    image_type : str
    """

    copy_id: int
    frame_id: int
    reduction_id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    image_type: str


def pruned_condition():
    """SQL condition on :class:`Reduction`: its product was pruned (an output frame with a
    pruned copy and no current copy), so the reduction must be made again when asked for."""
    out = aliased(Frame)
    pruned, current = aliased(Copy), aliased(Copy)
    return exists(
        select(out.id).where(
            out.reduction_id == Reduction.id,
            exists(select(pruned.id).where(pruned.frame_id == out.id, pruned.pruned_at.is_not(None))),
            ~exists(select(current.id).where(current.frame_id == out.id, current.is_current)),
        )
    )


def product_pruned(session: Session, reduction_id: int) -> bool:
    """Whether the product of reduction ``reduction_id`` was pruned (:func:`pruned_condition`)."""
    return session.scalar(select(Reduction.id).where(Reduction.id == reduction_id, pruned_condition())) is not None


def prunable_copies(session: Session, filters: FrameFilter | None = None, kinds: Sequence[str] = DEFAULT_KINDS,
                    roots: Iterable[str | Path] = ()) -> list[PrunableCopy]:
    """The current copies of products that can be remade from their provenance.

    A copy is offered when its frame is of one of ``kinds`` (derived types only), matches
    ``filters`` (its ``image_type`` is ignored: ``kinds`` says it), was made by a ``done``
    reduction with at least one recorded input, every input of that reduction has a current
    copy (the product can be remade), and the copy lies under one of ``roots`` (the products
    folder, the master library; all copies when empty). Raw frames and frames without a
    reduction (external masters) are never offered.

    Returns
    -------
    list of PrunableCopy
        Ordered by path.

    Raises
    ------
    ValueError
        A kind that is not a derived type.
    """
    bad = [k for k in kinds if k not in PRUNABLE_KINDS]
    if bad:
        raise ValueError(f"cannot prune {', '.join(bad)}: only derived frames ({', '.join(PRUNABLE_KINDS)})")
    filters = replace(filters or FrameFilter(), image_type=None)
    inp, inp_copy = aliased(ReductionInput), aliased(Copy)
    query = (
        frame_query(filters, Copy.id, Frame.id, Frame.reduction_id, Copy.path, Copy.size, Copy.mtime_ns, Copy.sha256,
                    Frame.image_type)
        .join(Copy, Copy.frame_id == Frame.id)
        .join(Reduction, Reduction.id == Frame.reduction_id)
        .where(Frame.image_type.in_(list(kinds)), Copy.is_current, Reduction.status == "done",
               exists(select(inp.frame_id).where(inp.reduction_id == Reduction.id)),
               ~exists(select(inp.frame_id).where(
                   inp.reduction_id == Reduction.id,
                   ~exists(select(inp_copy.id).where(inp_copy.frame_id == inp.frame_id, inp_copy.is_current)))))
        .order_by(Copy.path)
    )
    prefixes = [folder_prefix(root) for root in roots]
    if prefixes:
        query = query.where(or_(*(Copy.path.startswith(p, autoescape=True) for p in prefixes)))
    return [PrunableCopy(*row) for row in session.execute(query)]


def mark_pruned(session: Session, copy_ids: Iterable[int]) -> int:
    """Mark copies pruned (not current, not canonical, ``pruned_at`` now); returns how many
    were still current. Other current copies of the same frames stay canonical as they were;
    a frame left without a canonical current copy gets its oldest current one."""
    now, marked = utcnow(), 0
    frames: set[int] = set()
    for batch in chunked(list(copy_ids)):
        frames.update(session.scalars(select(Copy.frame_id).where(Copy.id.in_(batch), Copy.is_current)))
        marked += session.execute(update(Copy).where(Copy.id.in_(batch), Copy.is_current).values(
            is_current=False, is_canonical=False, pruned_at=now).execution_options(synchronize_session=False)).rowcount
    for frame_id in frames:  # another current copy becomes canonical (copies elsewhere are rare)
        has = session.scalar(select(Copy.id).where(Copy.frame_id == frame_id, Copy.is_current, Copy.is_canonical))
        if has is None:
            first = session.scalar(select(Copy.id).where(Copy.frame_id == frame_id, Copy.is_current)
                                   .order_by(Copy.id).limit(1))
            if first is not None:
                session.execute(update(Copy).where(Copy.id == first).values(is_canonical=True))
    return marked


def pruned_paths(session: Session, frame_ids: Iterable[int]) -> dict[int, str]:
    """frame id -> path of its latest pruned copy, for frames with no current copy."""
    out: dict[int, str] = {}
    current = aliased(Copy)
    for batch in chunked(set(frame_ids)):
        rows = session.execute(
            select(Copy.frame_id, Copy.path).where(
                Copy.frame_id.in_(batch), Copy.pruned_at.is_not(None),
                ~exists(select(current.id).where(current.frame_id == Copy.frame_id, current.is_current)))
            .order_by(Copy.pruned_at, Copy.id))
        out.update(rows.all())
    return out


def pruned_frame_at(session: Session, path: str | Path) -> Frame | None:
    """The frame whose copy at ``path`` (absolute, or resolved) was pruned, if any (latest)."""
    given = Path(path).expanduser()
    names = list(dict.fromkeys([str(given.absolute()), str(given.resolve()), os.fspath(path)]))
    return session.scalars(
        select(Frame).join(Copy, Copy.frame_id == Frame.id)
        .where(Copy.path.in_(names), Copy.pruned_at.is_not(None)).order_by(Copy.pruned_at.desc(), Copy.id.desc())
    ).first()


__all__ = ["DEFAULT_KINDS", "PRUNABLE_KINDS", "PrunableCopy", "mark_pruned", "product_pruned", "prunable_copies",
           "pruned_condition", "pruned_frame_at", "pruned_paths"]
