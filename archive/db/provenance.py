"""Provenance: reductions recorded as rows, and the trees they form.

A derived frame points to the reduction that produced it (``frames.reduction_id``); the
reduction lists its input frames with their roles (``reduction_inputs``), its step,
parameters, software versions, host and times. Following inputs down from a product reaches
raw frames (``reduction_id`` NULL); following them up from a raw frame or master finds every
product it went into.

A reduction is identified by its *fingerprint* (:func:`fingerprint`): the SHA-256 of the
step, the SHA-256 of every input file with its role, the parameters and the rule version.
Asking again for a reduction whose fingerprint is ``done`` is a no-op; one left ``running`` by
an interrupted run, or ``failed``, is taken up again (same row, no duplicate); see
:func:`start_reduction` for two runs asking at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from archive.files import process_alive
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import canonical_paths
from archive.db.models import (
    CalibrationSelection,
    Copy,
    Frame,
    Reduction,
    ReductionInput,
)
from archive.errors import ArchiveError

log = logging.getLogger(__name__)

#: Packages whose versions are recorded with every reduction.
SOFTWARE = ("archive", "numpy", "scipy", "astropy", "ccdproc", "astroalign", "sep", "astroscrappy")


class ProvenanceError(LookupError, ArchiveError):
    """A file is not in the catalogue, or a frame has no recorded provenance."""


def software_versions() -> dict[str, str]:
    """Installed versions of the packages in :data:`SOFTWARE` (missing ones left out)."""
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint(step: str, inputs: Iterable[tuple[str, str]], parameters: dict[str, Any], rule_version: str | None) -> str:
    """SHA-256 (hex) identifying a reduction: step, (input sha256, role) pairs, parameters, rules.

    Inputs are sorted, so their order does not matter; parameters are serialized as sorted JSON.
    """
    payload = json.dumps(
        {"step": step, "inputs": sorted(inputs), "parameters": parameters, "rules": rule_version},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def find_reduction(session: Session, fp: str) -> Reduction | None:
    """The most recent reduction with fingerprint ``fp``, if any."""
    return session.scalars(select(Reduction).where(Reduction.fingerprint == fp).order_by(Reduction.id.desc())).first()


#: ``Reduction.message`` of a ``running`` row: who is running it ("claimed by HOST pid PID").
_CLAIM = "claimed by {host} pid {pid}"


def _claim() -> str:
    return _CLAIM.format(host=socket.gethostname(), pid=os.getpid())


def _claimed_by_live_process(reduction: Reduction) -> bool:
    """Whether a ``running`` row is being worked on by another live process.

    A row claimed on this host by a process that is gone (killed run) or by this very process
    (an earlier attempt in it that did not finish) is free. A row claimed on another host
    cannot be checked from here and counts as live; the run on that host takes it up again.
    """
    parts = (reduction.message or "").split()
    if len(parts) != 5 or parts[:2] != ["claimed", "by"] or parts[3] != "pid":
        return False  # an old row without a claim: interrupted before claims were written
    host, pid = parts[2], int(parts[4]) if parts[4].isdigit() else -1
    if host != socket.gethostname():
        return True
    if pid == os.getpid() or pid <= 0:
        return False
    return process_alive(pid)


def start_reduction(
    session: Session, step: str, fp: str, parameters: dict[str, Any], rule_version: str | None,
    inputs: Sequence[tuple[int, str]],
) -> Reduction | None:
    """Record (or take up again) a reduction about to run, with its inputs (frame id, role).

    Returns the ``running`` row to work on, or None when the product must not be made here:
    a reduction of this fingerprint is already ``done``, or ``running`` in another live
    process (see below). A row of the same fingerprint left ``failed``, or ``running`` by a
    run that is gone, is reused: its status, parameters, host and start time are reset and
    missing input rows added. Flushes; the caller commits (one transaction per call).

    Two runs asking for the same fingerprint at once (on PostgreSQL; SQLite's write
    transactions already run one at a time) must not both compute it, and the schema has no
    unique fingerprint to stop a second insert. So the input frames' rows are locked first
    (``SELECT ... FOR NO KEY UPDATE``, ordered by id so that two callers never wait for each
    other in a cycle; the weaker lock lets other writers insert rows that merely reference
    these frames): every request of one fingerprint has the same input frames (the fingerprint
    hashes their checksums), so the second caller waits until the first has committed, then
    sees its row. A ``running`` row carries its claim in ``message`` ("claimed by HOST pid
    PID"); a claim by a live process on this host, or by any process on another host, makes
    the second caller skip (None). A lock on the (absent) reduction row itself would not
    serialize anything, and a lock held by the frames is released at the caller's commit,
    a few milliseconds later.
    """
    frame_ids = sorted({frame_id for frame_id, _ in inputs})
    for batch in chunked(frame_ids):
        session.execute(select(Frame.id).where(Frame.id.in_(batch)).order_by(Frame.id)
                        .with_for_update(key_share=True)).all()
    rows = list(session.scalars(select(Reduction).where(Reduction.fingerprint == fp).order_by(Reduction.id)))
    if any(r.status == "done" for r in rows):
        return None
    if any(r.status == "running" and _claimed_by_live_process(r) for r in rows):
        return None
    reduction = rows[-1] if rows else None
    if reduction is None:
        reduction = Reduction(step=step, fingerprint=fp, parameters=parameters, rule_version=rule_version,
                              software=software_versions(), host=socket.gethostname(), started_at=utcnow(),
                              status="running", message=_claim())
        session.add(reduction)
        session.flush()
    else:
        reduction.status, reduction.message, reduction.finished_at = "running", _claim(), None
        reduction.parameters = parameters
        reduction.host, reduction.started_at, reduction.software = socket.gethostname(), utcnow(), software_versions()
    have = set(session.execute(
        select(ReductionInput.frame_id, ReductionInput.role).where(ReductionInput.reduction_id == reduction.id)
    ))
    for frame_id, role in dict.fromkeys(inputs):
        if (frame_id, role) not in have:
            session.add(ReductionInput(reduction_id=reduction.id, frame_id=frame_id, role=role))
    session.flush()
    return reduction


def finish_reduction(
    session: Session, reduction_id: int, outputs: Sequence[int] = (), *, status: str = "done", message: str | None = None
) -> None:
    """Mark a reduction done (or failed) and point its output frames to it."""
    session.execute(update(Reduction).where(Reduction.id == reduction_id).values(
        status=status, message=message, finished_at=utcnow()))
    for batch in chunked(outputs):
        session.execute(update(Frame).where(Frame.id.in_(batch)).values(reduction_id=reduction_id))


def clear_selections(session: Session, reduction_id: int) -> None:
    """Remove selections recorded for ``reduction_id`` by an interrupted attempt."""
    session.execute(delete(CalibrationSelection).where(CalibrationSelection.reduction_id == reduction_id))


def frame_at_path(session: Session, path: str | Path) -> Frame:
    """The frame whose current copy is at ``path``: as ingested, or a path that resolves to it
    (relative to the working folder, ``~``, symbolic links).

    Raises
    ------
    ProvenanceError
        No current copy of that path is catalogued.
    """
    given = Path(path).expanduser()
    names = list(dict.fromkeys([str(given.absolute()), str(given.resolve())]))
    frame = session.scalars(
        select(Frame).join(Copy, Copy.frame_id == Frame.id).where(Copy.path.in_(names), Copy.is_current)
    ).first()
    if frame is None:
        raise ProvenanceError(f"{path}: not in the catalogue (run 'archive ingest' on it first)")
    return frame


def _frame_summary(frame: Frame, path: str | None) -> dict[str, Any]:
    return {
        "frame_id": frame.id, "image_type": frame.image_type, "path": path, "target": frame.target,
        "filter": frame.filter_name, "exposure_time_s": frame.exposure_time_s,
        "date_obs": frame.date_obs.isoformat() if frame.date_obs else None, "sha256": frame.sha256,
    }


def _reduction_summary(reduction: Reduction) -> dict[str, Any]:
    return {
        "reduction_id": reduction.id, "step": reduction.step, "status": reduction.status,
        "parameters": reduction.parameters, "software": reduction.software, "host": reduction.host,
        "started_at": reduction.started_at.isoformat() if reduction.started_at else None,
        "finished_at": reduction.finished_at.isoformat() if reduction.finished_at else None,
        "rule_version": reduction.rule_version,
    }


def provenance_tree(session: Session, frame: Frame) -> dict[str, Any]:
    """The tree from ``frame`` down to raw frames.

    Returns
    -------
    dict
        The frame (id, type, path, target, filter, exposure, DATE-OBS, sha256), its
        ``reduction`` (step, parameters, software, host, times, rule version) and ``inputs``:
        a list of the same structure with a ``role`` each. Raw frames (and masters made
        elsewhere) have no ``reduction`` and no inputs. A frame reached twice (a master used by
        every light) is expanded each time.
    """
    frames: dict[int, Frame] = {}
    reductions: dict[int, Reduction] = {}
    inputs: dict[int, list[tuple[int, str]]] = {}
    todo = {frame.id}
    frames[frame.id] = frame
    while todo:  # load the whole graph level by level: one query per level, not per node
        level = [frames[i] for i in todo if i in frames]
        missing = [i for i in todo if i not in frames]
        for batch in chunked(missing):
            for f in session.scalars(select(Frame).where(Frame.id.in_(batch))):
                frames[f.id] = f
                level.append(f)
        rids = {f.reduction_id for f in level if f.reduction_id is not None} - set(reductions)
        todo = set()
        for batch in chunked(rids):
            for r in session.scalars(select(Reduction).where(Reduction.id.in_(batch))):
                reductions[r.id] = r
            for rid, fid, role in session.execute(select(ReductionInput.reduction_id, ReductionInput.frame_id,
                                                         ReductionInput.role).where(ReductionInput.reduction_id.in_(batch))):
                inputs.setdefault(rid, []).append((fid, role))
                if fid not in frames:
                    todo.add(fid)
    paths = canonical_paths(session, frames)

    def build(fid: int, role: str | None, seen: frozenset) -> dict[str, Any]:
        f = frames[fid]
        node = _frame_summary(f, paths.get(fid))
        if role:
            node["role"] = role
        if f.reduction_id is not None and f.reduction_id in reductions and fid not in seen:
            node["reduction"] = _reduction_summary(reductions[f.reduction_id])
            node["inputs"] = [build(i, r, seen | {fid}) for i, r in sorted(inputs.get(f.reduction_id, []),
                                                                          key=lambda p: (p[1], p[0]))]
        return node

    return build(frame.id, None, frozenset())


def raw_leaves(tree: dict[str, Any]) -> set[int]:
    """Frame ids of the leaves of a provenance tree (frames with no recorded reduction)."""
    if not tree.get("inputs") and "reduction" not in tree:
        return {tree["frame_id"]}
    out: set[int] = set()
    for child in tree.get("inputs", []):
        out |= raw_leaves(child)
    return out


def used_by(session: Session, frame: Frame) -> list[dict[str, Any]]:
    """Every product ``frame`` went into, directly or through other products.

    Returns
    -------
    list of dict
        One per product: frame summary, ``step``, ``reduction_id``, ``depth`` (1 = made
        directly from ``frame``) and ``via`` (the input frame id it was made from), ordered
        by depth then id.
    """
    seen: set[int] = {frame.id}
    level = {frame.id}
    found: list[tuple[int, int, int, Reduction]] = []
    depth = 0
    while level:
        depth += 1
        rows = [row for batch in chunked(sorted(level)) for row in session.execute(
            select(Frame, ReductionInput.frame_id, Reduction)
            .join(ReductionInput, ReductionInput.reduction_id == Frame.reduction_id)
            .join(Reduction, Reduction.id == Frame.reduction_id)
            .where(ReductionInput.frame_id.in_(batch))
        )]
        level = set()
        for product, via, reduction in rows:
            if product.id in seen:
                continue
            seen.add(product.id)
            level.add(product.id)
            found.append((depth, product.id, via, reduction, product))
    paths = canonical_paths(session, [p[1] for p in found])
    return [
        {**_frame_summary(product, paths.get(pid)), "step": reduction.step, "reduction_id": reduction.id,
         "depth": d, "via": via}
        for d, pid, via, reduction, product in sorted(found, key=lambda p: (p[0], p[1]))
    ]


def format_tree(tree: dict[str, Any], indent: str = "", _shown: set[int] | None = None) -> list[str]:
    """Lines of a provenance tree for people: one frame per line, its step and parameters.

    A product reached again (a master used by every light) is expanded the first time only.
    """
    shown = set() if _shown is None else _shown
    role = f"[{tree['role']}] " if tree.get("role") else ""
    line = f"{indent}{role}{tree['image_type'] or '?'} #{tree['frame_id']} {tree['path'] or '(no file)'}"
    if "reduction" in tree and tree["frame_id"] in shown:
        return [line + "  (inputs shown above)"]
    shown.add(tree["frame_id"])
    lines = [line]
    if "reduction" in tree:
        r = tree["reduction"]
        params = ", ".join(f"{k}={v}" for k, v in sorted((r["parameters"] or {}).items()))
        lines.append(f"{indent}  <- {r['step']} (reduction {r['reduction_id']}, {r['status']}, {r['host']}, "
                     f"{r['finished_at'] or r['started_at']}){': ' + params if params else ''}")
        for child in tree.get("inputs", []):
            lines += format_tree(child, indent + "    ", shown)
    return lines
