"""Giving back disk space: delete products that can be remade, keep what the catalogue knows.

``archive prune`` lists the current copies of intermediate products (calibrated and registered
frames by default; masters and stacks only when asked by kind) that can be remade from their
provenance (:func:`archive.db.prune.prunable_copies`), with their sizes on disk, and deletes
them. The frames, their reductions and inputs stay; each deleted copy is kept as a pruned row
(:func:`archive.db.prune.mark_pruned`), and ``archive reduce`` remakes a pruned product on
demand. Like astro_reduce's clean-up of its intermediates, with the catalogue's guarantees:

- raw frames are never offered (only derived types, made by a recorded reduction with inputs);
- a file is deleted only when its bytes still match the catalogue: its size, then its SHA-256
  (:func:`archive.files.sha256_file`, the hash ingest records), are checked just before;
- a copy is first renamed to a temporary name (:func:`archive.files.temporary_path`), then
  marked pruned in one transaction, then deleted; if the transaction fails the file is renamed
  back. A run killed in between leaves a temporary file that the next ``archive night``
  removes (:func:`archive.files.remove_partials`) and a pruned row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from archive.db.frames import FrameFilter
from archive.db.prune import DEFAULT_KINDS, PrunableCopy, mark_pruned, prunable_copies
from archive.db.session import session_scope
from archive.files import sha256_file, temporary_path

log = logging.getLogger(__name__)


@dataclass
class PrunePlan:
    """What :func:`prune` would delete.

    Attributes
    ----------
    copies : list of PrunableCopy
        Ordered by path.
    sizes : dict
        Copy id -> size on disk now (bytes), None when the file is gone.
    """

    copies: list[PrunableCopy] = field(default_factory=list)
    sizes: dict[int, int | None] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """The sum of the sizes on disk of the files still there."""
        return sum(s for s in self.sizes.values() if s is not None)


@dataclass
class PruneResult:
    """What :func:`prune` did: the files deleted (path, bytes) and those refused (path, reason)."""

    pruned: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """Bytes given back."""
        return sum(size for _, size in self.pruned)


def plan_prune(engine: Engine, filters: FrameFilter | None = None, kinds: Sequence[str] = DEFAULT_KINDS,
               roots: Iterable[str | Path] = ()) -> PrunePlan:
    """The products :func:`prune` would delete, with their sizes on disk.

    Parameters
    ----------
    engine : Engine
    filters : FrameFilter, optional
        The usual frame filters, applied to the products (their night, target, filter, ...).
    kinds : sequence of str
        Derived image types (default calibrated and registered; ``master_dark``, ``stacked``
        ... only when named).
    roots : iterable of path
        Only copies under these folders (the products folder, the master library).

    Raises
    ------
    ValueError
        A kind that is not a derived type.
    """
    with session_scope(engine) as session:
        copies = prunable_copies(session, filters, kinds, roots)
    plan = PrunePlan(copies)
    for c in copies:
        try:
            plan.sizes[c.copy_id] = os.stat(c.path).st_size
        except OSError:
            plan.sizes[c.copy_id] = None
    return plan


def _refusal(copy: PrunableCopy) -> str | None:
    """Why ``copy``'s file must not be deleted, or None when its bytes match the catalogue."""
    try:
        size = os.stat(copy.path).st_size
    except FileNotFoundError:
        return "no file at this path any more"
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if size != copy.size:
        return f"its size changed since it was catalogued ({copy.size} -> {size} bytes): not deleted"
    try:
        digest = sha256_file(copy.path)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if digest != copy.sha256:
        return (f"its bytes changed since it was catalogued (sha256 {copy.sha256[:12]}... -> {digest[:12]}...): "
                "not deleted")
    return None


def prune(engine: Engine, plan: PrunePlan) -> PruneResult:
    """Delete the files of ``plan`` whose bytes still match the catalogue, marking each copy pruned.

    Each file is checked (size, then SHA-256 against the catalogue), renamed to a temporary
    name, marked pruned (one transaction), then deleted; a refused file is listed with its
    reason and the others go on.

    Returns
    -------
    PruneResult
    """
    result = PruneResult()
    for copy in plan.copies:
        reason = _refusal(copy)
        if reason is not None:
            log.warning("%s: %s", copy.path, reason)
            result.refused.append((copy.path, reason))
            continue
        tmp = temporary_path(copy.path)
        try:
            os.rename(copy.path, tmp)
        except OSError as exc:
            result.refused.append((copy.path, f"cannot move it: {exc.strerror}"))
            continue
        try:
            with session_scope(engine, write=True) as session:
                mark_pruned(session, [copy.copy_id])
        except BaseException:
            os.rename(tmp, copy.path)
            raise
        tmp.unlink(missing_ok=True)
        result.pruned.append((copy.path, copy.size))
    return result
