"""Provenance: reductions recorded as rows, and the trees they form.

A derived frame points to the reduction that produced it (``frames.reduction_id``); the
reduction lists its input frames with their roles (``reduction_inputs``), its step,
parameters, software versions, host and times. Following inputs down from a product reaches
raw frames (``reduction_id`` NULL); following them up from a raw frame or master finds every
product it went into.

A reduction is identified by its *fingerprint* (:func:`fingerprint`): the SHA-256 of the
step, the SHA-256 of every input file with its role, the parameters and the rule version.
The fingerprint is unique: one row per request. Asking again for a reduction whose
fingerprint is ``done`` is a no-op; one left ``running`` by an interrupted run, or ``failed``,
is taken up again (same row); see :func:`start_reduction` for two runs asking at once. A
reduction's state is kept in columns, apart from its ``parameters`` (what was asked): the claim
of the process working on it, the kind of a failure, a registration's group, the results.
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

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from archive.files import process_alive
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import canonical_paths
from archive.db.prune import pruned_condition, pruned_frame_at, pruned_paths
from archive.db.upsert import insert_missing
from archive.db.models import (
    FAILURE_KINDS,
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
    """The reduction with fingerprint ``fp`` (unique), if any."""
    return session.scalars(select(Reduction).where(Reduction.fingerprint == fp)).one_or_none()


def _claimant() -> tuple[str, int]:
    """The claim this process writes on a row it works on: (host name, process id)."""
    return socket.gethostname(), os.getpid()


def claimed_by_live_process(reduction: Reduction) -> bool:
    """Whether a ``running`` row is being worked on by another live process.

    A row without a claim (interrupted before claims were kept), or claimed on this host by a
    process that is gone (a killed run) or by this very process (an earlier attempt in it that
    did not finish), is free. A row claimed on another host cannot be checked from here and
    counts as live; the run on that host takes it up again.
    """
    if reduction.claim_host is None:
        return False
    if reduction.claim_host != socket.gethostname():
        return True
    claim_pid = reduction.claim_pid or 0
    if claim_pid == os.getpid() or claim_pid <= 0:
        return False
    return process_alive(claim_pid)


def current_calibrated(session: Session, light_ids: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
    """Each light's current calibration: the latest finished one whose product is not
    superseded (``Frame.superseded_by_id``: a product chosen again after a newer one, e.g. a
    master marked bad and then good again, is current).

    Parameters
    ----------
    session : Session
    light_ids : iterable of int, optional
        The lights asked about; default every light with a calibration.

    Returns
    -------
    dict
        light id -> (calibrated frame id, reduction id), for the lights that have one.
    """
    def query(batch: list[int] | None):
        latest = (
            select(ReductionInput.frame_id.label("light_id"), func.max(Reduction.id).label("rid"))
            .join(Reduction, Reduction.id == ReductionInput.reduction_id)
            .join(Frame, Frame.reduction_id == Reduction.id)
            .where(Reduction.step == "calibrate", Reduction.status == "done", ReductionInput.role == "light",
                   Frame.superseded_by_id.is_(None))
            .group_by(ReductionInput.frame_id)
        )
        if batch is not None:
            latest = latest.where(ReductionInput.frame_id.in_(batch))
        latest = latest.subquery()
        return session.execute(
            select(latest.c.light_id, Frame.id, latest.c.rid).join(Frame, Frame.reduction_id == latest.c.rid)
        )

    batches = [None] if light_ids is None else chunked(light_ids)
    return {light: (frame, rid) for batch in batches for light, frame, rid in query(batch)}


def start_reduction(
    session: Session, step: str, fp: str, parameters: dict[str, Any], rule_version: str | None,
    inputs: Sequence[tuple[int, str]], *, group_key: str | None = None, lineage: str | None = None,
) -> Reduction | None:
    """Record (or take up again) a reduction about to run, with its inputs (frame id, role).

    Returns the ``running`` row to work on, claimed by this process (``claim_host``,
    ``claim_pid``, ``claimed_at``), or None when the product must not be made here: the
    reduction of this fingerprint is ``done`` (and its product was not pruned:
    :func:`archive.db.prune.pruned_condition`; a pruned product is made again), or ``running`` under the claim of another live
    process (:func:`claimed_by_live_process`: a live process on this host, or any on another
    host). A row left ``failed``, or ``running`` by a run that is gone, is taken over: its
    parameters, host, software and start time are those of this request, its outcome
    (message, failure kind, results) is cleared and missing input rows are added. Flushes; the
    caller commits (one transaction per call).

    Parameters
    ----------
    group_key : str, optional
        Registrations: the registration group the frame is registered in (state, not
        fingerprinted; see ``Reduction.group_key``).
    lineage : str, optional
        What the product is a version of (``Reduction.lineage``, not fingerprinted). A ``done``
        reduction asked for again is its lineage's choice once more: when its product had
        been superseded (a master marked bad, then good again) it is made current again
        (:func:`make_current`).

    Notes
    -----
    Two runs asking for the same fingerprint at once never both get the row. The row is
    inserted if absent (``INSERT ... ON CONFLICT DO NOTHING`` on the unique fingerprint,
    :func:`archive.db.upsert.insert_missing`): on PostgreSQL a second inserter waits for the
    first one's transaction and then inserts nothing; SQLite's write transactions run one at a
    time. The claim is then taken by a conditional ``UPDATE`` that names the claim seen when the
    row was read (status not ``done``, same claim host and pid): of two callers that both saw a
    free row, the second one's update matches no row (PostgreSQL re-reads the row once the first
    has committed) and it skips.
    """
    host, pid = _claimant()
    now, software = utcnow(), software_versions()
    insert_missing(session, Reduction.__table__, [{
        "step": step, "fingerprint": fp, "parameters": parameters, "rule_version": rule_version,
        "software": software, "host": host, "started_at": now, "status": "running", "lineage": lineage,
    }])
    reduction = session.scalars(select(Reduction).where(Reduction.fingerprint == fp)
                                .execution_options(populate_existing=True)).one()
    redo = reduction.status == "done" and session.scalar(
        select(Reduction.id).where(Reduction.id == reduction.id, pruned_condition())) is not None
    if reduction.status == "done" and not redo:
        reuse_product(session, reduction, lineage)
        return None
    if reduction.status == "running" and claimed_by_live_process(reduction):
        return None
    seen = Reduction.claim_host.is_(None) if reduction.claim_host is None else Reduction.claim_host == reduction.claim_host
    seen_pid = Reduction.claim_pid.is_(None) if reduction.claim_pid is None else Reduction.claim_pid == reduction.claim_pid
    claimed = session.execute(
        update(Reduction).where(Reduction.id == reduction.id, seen, seen_pid,
                                (pruned_condition() if redo else Reduction.status != "done")).values(
            status="running", claim_host=host, claim_pid=pid, claimed_at=now, parameters=parameters,
            rule_version=rule_version, software=software, host=host, started_at=now, finished_at=None,
            message=None, failure_kind=None, results=None, group_key=group_key, lineage=lineage,
        ).execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:  # another run claimed it (or finished it) since it was read
        return None
    session.refresh(reduction)
    have = set(session.execute(
        select(ReductionInput.frame_id, ReductionInput.role).where(ReductionInput.reduction_id == reduction.id)
    ))
    for frame_id, role in dict.fromkeys(inputs):
        if (frame_id, role) not in have:
            session.add(ReductionInput(reduction_id=reduction.id, frame_id=frame_id, role=role))
    session.flush()
    return reduction


def finish_reduction(
    session: Session, reduction_id: int, outputs: Sequence[int] = (), *, status: str = "done",
    message: str | None = None, failure_kind: str | None = None, results: dict[str, Any] | None = None,
) -> None:
    """Mark a reduction done, failed or rejected, release its claim and point its output frames to it.

    Parameters
    ----------
    status : str
        ``done``; ``failed`` (a step that broke); ``rejected`` (a frame judged unusable, e.g.
        one that cannot be aligned: not tried again with the same inputs).
    message : str, optional
        Why it failed or was rejected.
    failure_kind : str, optional
        Of a failed or rejected reduction (:data:`archive.db.models.FAILURE_KINDS`; default
        ``error`` for a failure).
    results : dict, optional
        What came out of the step (``Reduction.results``).

    Raises
    ------
    ValueError
        An unknown ``status`` or ``failure_kind``.
    """
    if status not in ("done", "failed", "rejected"):
        raise ValueError(f"a reduction finishes done, failed or rejected, not {status!r}")
    if status in ("failed", "rejected"):
        failure_kind = failure_kind or ("error" if status == "failed" else None)
        if failure_kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {failure_kind!r} (one of {', '.join(FAILURE_KINDS)})")
    else:
        failure_kind = None
    session.execute(update(Reduction).where(Reduction.id == reduction_id).values(
        status=status, message=message, finished_at=utcnow(), failure_kind=failure_kind, results=results,
        claim_host=None, claim_pid=None, claimed_at=None,
    ).execution_options(synchronize_session=False))
    for batch in chunked(outputs):
        session.execute(update(Frame).where(Frame.id.in_(batch)).values(reduction_id=reduction_id))
    if status == "done" and outputs:
        make_current(session, reduction_id)


def lineage_of(step: str, key: object) -> str:
    """The ``Reduction.lineage`` of a product of ``step``: ``step:key`` (a light's id), or
    ``step:`` and the first 32 hex digits of the SHA-256 of a longer key (a stack group)."""
    text = f"{step}:{key}"
    return text if len(text) <= 48 else f"{step}:{hashlib.sha256(str(key).encode()).hexdigest()[:32]}"


def reuse_product(session: Session, reduction: Reduction, lineage: str | None) -> None:
    """A ``done`` reduction asked for again: its product is its lineage's current one again.

    Parameters
    ----------
    reduction : Reduction
        The done row (its product is not made again).
    lineage : str or None
        Its lineage (``Reduction.lineage``), recorded when the row has none (an earlier
        catalogue's); None changes nothing.

    Notes
    -----
    A product superseded since (a master marked bad, then good again: the first product's
    inputs are chosen once more) is made current again (:func:`make_current`); one that is
    current already costs one index look-up.
    """
    if lineage is None or reduction.status != "done":
        return
    if reduction.lineage != lineage:
        reduction.lineage = lineage
        session.flush()
    if session.scalar(select(Frame.id).where(Frame.reduction_id == reduction.id,
                                             Frame.superseded_by_id.is_not(None)).limit(1)) is not None:
        make_current(session, reduction.id)


def make_current(session: Session, reduction_id: int) -> None:
    """Make the products of ``reduction_id`` the current ones of its lineage.

    The outputs of every other ``done`` reduction of the same ``Reduction.lineage`` point to
    this reduction's product (``Frame.superseded_by_id``), and its own outputs to none. A
    reduction without a lineage (masters, plate solutions, rows of earlier catalogues)
    changes nothing. Flushes nothing itself; the caller commits.

    This is what closes the stale cycle (``archive stale`` -> ``archive reduce --stale`` ->
    nothing stale): the product made again replaces the stale one wherever it was written,
    in whichever products folder, and copyback and projects take only current products
    (:attr:`archive.db.frames.FrameFilter.current_only`).
    """
    lineage = session.scalar(select(Reduction.lineage).where(Reduction.id == reduction_id))
    if lineage is None:
        return
    new = session.scalar(select(func.min(Frame.id)).where(Frame.reduction_id == reduction_id))
    if new is None:
        return
    session.execute(update(Frame).where(Frame.reduction_id == reduction_id).values(superseded_by_id=None)
                    .execution_options(synchronize_session=False))
    others = select(Reduction.id).where(Reduction.lineage == lineage, Reduction.id != reduction_id,
                                        Reduction.status == "done")
    session.execute(update(Frame).where(Frame.reduction_id.in_(others)).values(superseded_by_id=new)
                    .execution_options(synchronize_session=False))


def clear_selections(session: Session, reduction_id: int) -> None:
    """Remove selections recorded for ``reduction_id`` by an interrupted attempt."""
    session.execute(delete(CalibrationSelection).where(CalibrationSelection.reduction_id == reduction_id))


def frame_at_path(session: Session, path: str | Path) -> Frame:
    """The frame whose current copy is at ``path``: as ingested, or a path that resolves to it
    (relative to the working folder, ``~``, symbolic links); else the frame whose copy there was
    pruned (:mod:`archive.db.prune`).

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
    if frame is None:  # a product deleted by 'archive prune': its rows and provenance are kept
        frame = pruned_frame_at(session, path)
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
        "rule_version": reduction.rule_version, "results": reduction.results,
        "failure_kind": reduction.failure_kind, "message": reduction.message,
    }


def provenance_tree(session: Session, frame: Frame) -> dict[str, Any]:
    """The tree from ``frame`` down to raw frames.

    Returns
    -------
    dict
        The frame (id, type, path, target, filter, exposure, DATE-OBS, sha256), its
        ``reduction`` (step, status, parameters, software, host, times, rule version, results,
        failure kind and message) and ``inputs``; a frame whose file was pruned has the path
        it had and ``pruned`` True. ``inputs`` is
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
    pruned = pruned_paths(session, set(frames) - set(paths))

    def build(fid: int, role: str | None, seen: frozenset) -> dict[str, Any]:
        f = frames[fid]
        node = _frame_summary(f, paths.get(fid, pruned.get(fid)))
        if fid in pruned:
            node["pruned"] = True
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


#: Input roles of the masters a product was made with.
MASTER_ROLES = ("master_bias", "master_dark", "master_flat")


def masters_below(session: Session, frame_ids: Iterable[int]) -> set[int]:
    """The masters that the frames ``frame_ids`` were made with, all the way down, not
    counting ``frame_ids`` themselves: the master bias of a bias-subtracted master dark, the
    master bias and dark of a master flat (the ``master_*`` inputs of the reductions that made
    them, and theirs).

    A project folder that holds a bias-subtracted master dark needs its master bias too, or
    it cannot calibrate its own lights (``archive project collect``).
    """
    start = set(frame_ids)
    found: set[int] = set()
    todo = set(start)
    while todo:
        rows = set()
        for batch in chunked(todo):
            rows |= set(session.scalars(
                select(ReductionInput.frame_id).join(Frame, Frame.reduction_id == ReductionInput.reduction_id)
                .where(Frame.id.in_(batch), ReductionInput.role.in_(MASTER_ROLES))))
        todo = rows - found - start
        found |= todo
    return found


def frame_summary(session: Session, frame: Frame) -> dict[str, Any]:
    """One frame as a node of :func:`provenance_tree` (id, type, path, target, filter,
    exposure, DATE-OBS, sha256), without its inputs."""
    return _frame_summary(frame, canonical_paths(session, [frame.id]).get(frame.id))


def provenance_summary(tree: dict[str, Any]) -> dict[str, Any]:
    """What a provenance tree holds, counted once per frame and reduction.

    Parameters
    ----------
    tree : dict
        From :func:`provenance_tree` (a frame reached twice is counted once).

    Returns
    -------
    dict
        ``frame`` (the root's summary without inputs), ``reduction`` (the root's, or None),
        ``steps`` (step -> reductions), ``products`` (image type -> derived frames below the
        root), ``raw`` (image type -> leaves: raw frames, and masters made elsewhere),
        ``masters`` (the master frames used: frame summaries, by id) and ``raw_ids`` (the
        leaves' frame ids, sorted).
    """
    frames: dict[int, dict[str, Any]] = {}
    reductions: dict[int, str] = {}
    leaves: set[int] = set()

    def walk(node: dict[str, Any]) -> None:
        frames.setdefault(node["frame_id"], node)
        if "reduction" in node:
            reductions.setdefault(node["reduction"]["reduction_id"], node["reduction"]["step"])
            for child in node.get("inputs", []):
                walk(child)
        elif not node.get("inputs"):
            leaves.add(node["frame_id"])

    walk(tree)

    def by_type(ids) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in sorted(ids):
            kind = frames[i]["image_type"] or "unknown"
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    steps: dict[str, int] = {}
    for step in reductions.values():
        steps[step] = steps.get(step, 0) + 1
    products = [i for i in frames if i != tree["frame_id"] and i not in leaves]
    masters = [i for i in frames if (frames[i]["image_type"] or "").startswith("master_")]
    strip = ("inputs", "reduction", "role")
    return {
        "frame": {k: v for k, v in tree.items() if k not in strip},
        "reduction": tree.get("reduction"),
        "steps": dict(sorted(steps.items(), key=lambda kv: (-kv[1], kv[0]))),
        "products": by_type(products),
        "raw": by_type(leaves),
        "masters": [{k: v for k, v in frames[i].items() if k not in strip} for i in sorted(masters)],
        "raw_ids": sorted(leaves),
    }
