"""Registering the calibrated lights of each group onto one reference, then stacking them.

A group is every light of one instrument, target and filter (and night with ``[stack]
per_night``) that has a current calibrated frame. The *current* calibrated frame of a light is
the output of its latest finished calibration; a group's current registered frames are those
registered for its current membership."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor, Future, as_completed
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from archive.db.bulk import chunked
from archive.db.models import (
    Frame,
    Instrument,
    Reduction,
    ReductionInput,
)
from archive.db.session import session_scope
from archive.errors import UnsafePathError
from archive.files import fits_stem
from archive.progress import NoProgress, Progress
from archive import keywords as kw
from archive.reduce.align import (
    fixed_pattern,
    without,
    RegistrationJob,
    choose_reference,
    count_stars,
    register_file,
    wcs_cards,
)
from archive.reduce.config import ReductionConfig
from archive.db.frames import canonical_paths, instrument_names
from archive.db.prune import pruned_condition
from archive.ingest.products import ProductRun, fail_product, record_product, reject_product
from archive.db.provenance import (
    current_calibrated,
    fingerprint,
    lineage_of,
    reuse_product,
    start_reduction,
)

from archive.reduce.summary import ReduceSummary, group_name
from archive.reduce.outputs import frames_by_id, output_path, submit_product
from archive.reduce.stacking import stack_group

log = logging.getLogger(__name__)


# -- registration and stacking -------------------------------------------------------------------


def _group_key(frame: Frame, per_night: bool, models: dict[int, Any]) -> tuple:
    """Instrument model (units of one model register and stack together), target, filter, night."""
    name = models.get(frame.instrument_id)
    return (name.model if name is not None else None, frame.target_key, (frame.filter_name or "").lower(),
            frame.night if per_night else None)


def _group_members(session: Session, lights: Sequence[Frame], per_night: bool) -> dict[tuple, list[tuple[Frame, Frame]]]:
    """Registration groups touched by ``lights``: key -> [(light, current calibrated frame)] of
    every light of the group that has one, ordered by DATE-OBS."""
    models = instrument_names(session, [light.instrument_id for light in lights])
    keys = {_group_key(light, per_night, models) for light in lights}
    out: dict[tuple, list[tuple[Frame, Frame]]] = defaultdict(list)
    for model, target_key, filter_name, night in keys:
        query = select(Frame).where(Frame.image_type == "light", Frame.duplicate_of_id.is_(None))
        query = query.where(Frame.instrument_id.in_(select(Instrument.id).where(func.coalesce(Instrument.model, Instrument.name) == model))
                            if model is not None else Frame.instrument_id.is_(None))
        query = query.where(Frame.target_key == target_key if target_key is not None else Frame.target_key.is_(None))
        query = query.where(func.lower(func.coalesce(Frame.filter_name, "")) == filter_name)
        if per_night:
            query = query.where(Frame.night == night)
        members = list(session.scalars(query.order_by(Frame.date_obs_s, Frame.id)))
        current = current_calibrated(session, [m.id for m in members])
        calibrated = {f.id: f for f in frames_by_id(session, [c for c, _ in current.values()])}
        out[(model, target_key, filter_name, night)] = [
            (m, calibrated[current[m.id][0]]) for m in members if m.id in current
        ]
    return out


def _settled():
    """The registrations not to be tried again (an SQL condition): done, rejected, or failed to
    align (rows of earlier versions; deterministic)."""
    return and_(or_(Reduction.status.in_(("done", "rejected")),
                    and_(Reduction.status == "failed", Reduction.failure_kind == "alignment")),
                ~pruned_condition())  # a pruned registered frame is made again


def _registration_state(session: Session, calibrated_ids: Sequence[int], group_hash: str) -> dict[int, tuple[str, int | None]]:
    """calibrated frame id -> (status, registered frame id) of the settled registrations
    (:func:`_settled`) made for this group."""
    state: dict[int, tuple[str, int | None]] = {}
    for batch in chunked(calibrated_ids):
        rows = session.execute(
            select(ReductionInput.frame_id, Reduction.status, Frame.id)
            .join(Reduction, Reduction.id == ReductionInput.reduction_id)
            .outerjoin(Frame, Frame.reduction_id == Reduction.id)
            .where(Reduction.step == "register", Reduction.group_key == group_hash, _settled(),
                   ReductionInput.role == "input", ReductionInput.frame_id.in_(batch))
            .order_by(Reduction.id)
        )
        for cid, status, out_id in rows:
            state[cid] = (status, out_id)
    return state


def register_and_stack(
    engine: Engine, light_ids: Sequence[int], *, config: ReductionConfig, products: ProductRun,
    executor: Executor, progress: Progress | None = None, summary: ReduceSummary | None = None,
) -> ReduceSummary:
    """Register and stack the groups the lights ``light_ids`` belong to.

    A group is every light of one instrument, target and filter (and night with
    ``[stack] per_night``) that has a current calibrated frame, not only those in
    ``light_ids``. Its frames are registered onto one reference (:mod:`archive.reduce.align`)
    and stacked per exposure time (at least two frames per stack); lights rejected by their
    quality verdict are left out of the stack (:func:`archive.reduce.stacking.stack_group`).

    Parameters
    ----------
    engine : Engine
        The catalogue; each registered and stacked frame is its own unit of work.
    light_ids : sequence of int
        Raw lights whose groups are to be registered and stacked.
    config : ReductionConfig
        ``[register]`` and ``[stack]`` parameters and the output layout.
    products : ProductRun
        The ingest run the products join.
    executor : Executor
        Where the pixel work runs.
    progress : Progress, optional
    summary : ReduceSummary, optional
        Added to and returned (default a new one).

    Returns
    -------
    ReduceSummary
        A frame that cannot be read, fails to align, or cannot be ingested is recorded as a
        failure and left out; the rest of its group goes on. Alignment failures are kept as
        ``failed`` reductions with ``failure_kind = 'alignment'`` and not tried again with the
        same inputs; other failures (of a frame or a stack) are tried again next run.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The catalogue cannot be read; a group whose bookkeeping fails is recorded as a
        failure and the next group goes on.
    """
    summary = summary if summary is not None else ReduceSummary()
    per_night = bool(config.stack.get("per_night", False))
    with session_scope(engine) as session:
        lights = frames_by_id(session, light_ids)
        groups = _group_members(session, lights, per_night)
    for key, members in groups.items():
        if not members:
            continue
        name = group_name(members[0][0])
        try:
            registered = _register_group(engine, key, members, config=config, products=products,
                                         executor=executor, progress=progress, summary=summary, name=name)
            stack_group(engine, registered, config=config, products=products, executor=executor,
                         summary=summary, name=name)
        except Exception as exc:
            log.exception("group %s failed", name)
            summary.fail(name, f"register/stack {name}", f"{type(exc).__name__}: {exc}")
    return summary


def registration_parameters(register: dict[str, Any]) -> dict[str, Any]:
    """The registration parameters of ``[register]`` (configs/reduction.toml), with defaults:
    what a registration is asked, fingerprinted."""
    detect_sigma = float(register.get("detect_sigma", 5.0))
    return {
        "reference_rule": register.get("reference", "most_stars"), "detect_sigma": detect_sigma,
        "max_control_points": int(register.get("max_control_points", 50)),
        "max_shift_fraction": float(register.get("max_shift_fraction", 0.15)), "interpolation": "bilinear",
        "min_fwhm_px": float(register.get("min_fwhm_px", 1.2)),
        "min_pixels": int(register.get("min_pixels", 3)),
        "fixed_pattern_px": float(register.get("fixed_pattern_px", 0.15)),
        "fixed_fraction": float(register.get("fixed_fraction", 0.6)),
        "min_matches": int(register.get("min_matches", 6)),
        "max_residual_px": float(register.get("max_residual_px", 1.0)),
        "retry_sigma": float(register.get("retry_sigma", max(detect_sigma / 2, 2.0))),
        "reuse_min_stars": int(register.get("reuse_min_stars", 25)),
    }


def _count_stars_all(
    engine: Engine, executor: Executor, members: list[tuple[Frame, Frame]], paths: dict[int, str], parameters: dict[str, Any],
    summary: ReduceSummary, name: str, progress: Progress,
) -> tuple[list[tuple[Frame, Frame]], dict[str, dict]]:
    """Detect stars in every member's calibrated frame, or reuse the star lists their
    measurements kept (:func:`archive.reduce.quality_measure.stored_stars`, same detection threshold);
    a frame that cannot be read is recorded as a failure and left out. Returns the members
    kept (in order) and the results by path.

    The stored lists are reused only when every member has one of at least
    ``reuse_min_stars`` stars. A measurement's list is made for shapes, not for matching: it
    has no floor on the pixels above the threshold and its members are not checked against
    the sequence's fixed pattern (:func:`archive.reduce.align.detect_stars`), so on a faint
    frame, where a few hot-pixel clusters weigh as much as the stars, it misleads the match.
    Below that count the whole group is detected afresh, with registration's own filters and
    the frame's non-finite pixels masked, so that every frame's count (the reference rule)
    and the fixed-pattern check come from one detection."""
    futures: dict[Future, tuple[Frame, Frame]] = {}
    kept: list[tuple[Frame, Frame]] = []
    from archive.reduce.quality_measure import stored_stars  # the star lists 'archive measure' kept

    with session_scope(engine) as session:
        measured = stored_stars(session, [cal.id for _, cal in members], parameters["detect_sigma"])
    on_disk = [cal.id for _, cal in members if cal.id in paths]
    fewest = min((measured[c]["n_stars"] if c in measured else -1 for c in on_disk), default=-1)
    if measured and fewest < parameters["reuse_min_stars"]:
        log.info("%s: stored star lists too short or missing (fewest %d, reused from %d), detecting afresh",
                 name, fewest, parameters["reuse_min_stars"])
        measured = {}
    for light, cal in members:
        path = paths.get(cal.id)
        if path is None:
            summary.fail(name, f"register calibrated frame #{cal.id}", "no file on disk")
            continue
        if cal.id in measured:  # the stars its measurement found: not detected again
            future: Future = Future()
            future.set_result({"path": path, "n_stars": measured[cal.id]["n_stars"], "xy": measured[cal.id]["xy"],
                               "stored": True})
            futures[future] = (light, cal)
            continue
        futures[executor.submit(count_stars, path, parameters["detect_sigma"], parameters["max_control_points"],
                                parameters["min_fwhm_px"], parameters["min_pixels"])] = (light, cal)
    progress.start(len(futures), f"stars {name}")
    stars: dict[str, dict] = {}
    for future, (light, cal) in futures.items():  # in DATE-OBS order: the reference rule breaks ties by it
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - one unreadable frame is left out; the group goes on
            log.warning("%s: cannot detect stars, left out: %s", paths[cal.id], exc)
            summary.fail(name, f"register {paths[cal.id]}", f"{type(exc).__name__}: {exc}")
        else:
            stars[result["path"]] = result
            kept.append((light, cal))
        progress.advance()
    progress.finish()
    return kept, stars


def _register_group(
    engine: Engine, key: tuple, members: list[tuple[Frame, Frame]], *, config: ReductionConfig,
    products: ProductRun, executor: Executor, progress: Progress | None, summary: ReduceSummary, name: str,
) -> list[int]:
    """Register the group's current calibrated frames; returns the registered frame ids."""
    progress = progress or NoProgress()
    reg = config.register
    group_hash = hashlib.sha256(",".join(sorted(c.sha256 for _, c in members)).encode()).hexdigest()[:16]
    calibrated = [c for _, c in members]
    with session_scope(engine) as session:
        state = _registration_state(session, [c.id for c in calibrated], group_hash)
        paths = canonical_paths(session, [c.id for c in calibrated] + [light.id for light, _ in members])
        instruments = instrument_names(session, [light.instrument_id for light, _ in members])
    if all(c.id in state for c in calibrated):
        summary.unchanged += len(calibrated)
        return [state[c.id][1] for c in calibrated if state[c.id][0] == "done" and state[c.id][1] is not None]
    pruned = [light.id for light, c in members if c.id not in paths]
    if pruned:  # 'archive prune' deleted them; only calibrating their lights again remakes them
        summary.fail(name, "register", f"the calibrated frames of light(s) #{', #'.join(map(str, pruned))} were "
                     "pruned: reduce all the group's lights (e.g. 'archive reduce --target ... --filter ...') to "
                     "remake them")
        return []
    parameters = registration_parameters(reg)
    members, stars = _count_stars_all(engine, executor, members, paths, parameters, summary, name, progress)
    if not members:
        return []
    ordered = [paths[c.id] for _, c in members]
    fixed = fixed_pattern([stars[p]["xy"] for p in ordered], parameters["fixed_pattern_px"],
                          parameters["fixed_fraction"])
    fixed_xy = np.vstack([stars[p]["xy"][mask] for p, mask in zip(ordered, fixed)] + [np.empty((0, 2))])
    for p, mask in zip(ordered, fixed):  # fixed pattern is no star: not a control point, not counted
        stars[p] = {**stars[p], "xy": stars[p]["xy"][~mask][: parameters["max_control_points"]],
                    "n_stars": stars[p]["n_stars"] - int(mask.sum()), "fixed_pattern": int(mask.sum())}
    reference_path = choose_reference([(p, stars[p]["n_stars"]) for p in ordered])
    reference = members[ordered.index(reference_path)][1]
    reference_wcs = wcs_cards(fits.getheader(reference_path))
    reference_retry = np.empty((0, 2))
    if parameters["retry_sigma"]:
        reference_retry = without(count_stars(reference_path, parameters["retry_sigma"], 0, parameters["min_fwhm_px"],
                                              parameters["min_pixels"])["xy"],
                                  fixed_xy, parameters["fixed_pattern_px"])
    out_ids: list[int] = []
    futures: dict[Future, tuple[RegistrationJob, int, dict[str, Any]]] = {}
    for light, cal in members:
        path = paths[cal.id]
        found = {"n_stars": stars[path]["n_stars"], "reference_stars": stars[reference_path]["n_stars"],
                 "fixed_pattern": stars[path]["fixed_pattern"],
                 "stars_from": "measurement" if stars[path].get("stored") else "detection"}
        fp = fingerprint("register", [(cal.sha256, "input"), (reference.sha256, "reference")], parameters, None)
        try:
            output = output_path(config, "registered", light, instruments, fp, stem=fits_stem(paths.get(light.id, path)))
        except UnsafePathError as exc:
            summary.fail(name, f"register {path}", str(exc))
            continue
        with session_scope(engine, write=True) as session:
            existing = session.scalars(select(Reduction).where(Reduction.fingerprint == fp, _settled())).one_or_none()
            if existing is not None:
                # same source and reference as before: adopt it for the current group membership
                existing.group_key = group_hash
                reuse_product(session, existing, lineage_of("register", light.id))
                out = session.scalar(select(Frame.id).where(Frame.reduction_id == existing.id))
                summary.unchanged += 1
                if existing.status == "done" and out is not None:
                    out_ids.append(out)
                continue
            reduction = start_reduction(session, "register", fp, parameters, None,
                                        [(cal.id, "input"), (reference.id, "reference")], group_key=group_hash,
                                        lineage=lineage_of("register", light.id))
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # made meanwhile, or being made, by another run
            summary.unchanged += 1
            continue
        job = RegistrationJob(
            source=path, output=str(output), reference=reference_path, source_xy=stars[path]["xy"],
            reference_xy=stars[reference_path]["xy"], max_shift_fraction=parameters["max_shift_fraction"],
            reference_wcs=reference_wcs, header={kw.REDUCTION_STEP: "register", kw.FINGERPRINT: fp},
            max_control_points=parameters["max_control_points"], min_matches=parameters["min_matches"],
            max_residual_px=parameters["max_residual_px"], min_fwhm_px=parameters["min_fwhm_px"],
            min_pixels=parameters["min_pixels"],
            retry_sigma=parameters["retry_sigma"], reference_xy_retry=reference_retry, fixed_xy=fixed_xy,
            fixed_pattern_px=parameters["fixed_pattern_px"],
        )
        future = submit_product(executor, output, fp, {"ok": True, "output": str(output), "warning": None}, register_file, job)
        futures[future] = (job, reduction_id, found)
    for future in as_completed(futures):
        job, reduction_id, found = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - not an alignment failure: tried again next run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if not result["ok"] and result.get("rejected"):
            log.info("%s: rejected, left out of the stack: %s", job.source, result["error"])
            reject_product(engine, reduction_id, result["error"], kind=result["failure"], results=found)
            summary.reject(name, f"register {job.source}", result["error"])
            continue
        if not result["ok"]:
            log.warning("%s: not registered, left out of the stack: %s", job.source, result["error"])
            fail_product(engine, reduction_id, result["error"], results=found)
            summary.fail(name, f"register {job.source}", result["error"])
            continue
        if result.get("warning"):
            log.warning(result["warning"])
            summary.warnings.append(result["warning"])
        found = {**found, **{k: result[k] for k in ("dx", "dy", "rotation_deg", "scale", "matches", "residual_px",
                                                     "retried") if result.get(k) is not None}}
        try:
            out_ids.append(record_product(products, reduction_id, job.output, results=found))
        except Exception as exc:  # noqa: BLE001 - one frame's failure is recorded; the group goes on
            log.warning("%s: registered but not catalogued, left out of the stack: %s", job.output, exc)
            fail_product(engine, reduction_id, f"{type(exc).__name__}: {exc}", results=found)
            summary.fail(name, f"register {job.source}", f"{type(exc).__name__}: {exc}")
            continue
        summary.registered.append(job.output)
        summary.by_group[name]["registered"] += 1
    return out_ids
