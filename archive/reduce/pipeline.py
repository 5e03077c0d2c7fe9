"""Reducing lights into calibrated, registered and stacked products, with provenance.

Each product is its own unit of work, in this order:

1. its reduction row is committed as ``running`` with its inputs (a later run takes the same
   row up again: no duplicate);
2. the pixels are computed in the executor and written to a temporary name, then renamed;
3. the file is ingested as a derived frame (:func:`archive.ingest.ingest_paths`);
4. one transaction links the frame to the reduction, stores the master selections used and
   marks the reduction ``done``.

A request whose fingerprint (:func:`archive.db.provenance.fingerprint`: step, input files
and roles, parameters, rule version) already has a ``done`` reduction is skipped, so running
twice does nothing the second time; a file already at the output path carrying the request's
fingerprint (an interrupted run got past the rename) is ingested and linked, not recomputed. A
file at the output path with another fingerprint is never overwritten (a failure). Output
names carry the start of the fingerprint (``{fp}`` in the layouts), so two lights of the same
file name (two rigs, a counter restarting per session) get two products.

Failures: a frame that cannot be read or written is recorded and left out, and tried again
next run; a frame that does not align is recorded as ``failed`` with
``parameters['failure'] = 'alignment'`` and not tried again with the same inputs.

Grouping: lights are registered per instrument, target and filter (and night when
``[stack] per_night``), onto one reference per group; stacks are made per group and exposure
time. The *current* calibrated frame of a light is the output of its latest finished
calibration; a group's current registered frames are those registered for its current
membership (``parameters.group``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from archive.calib.rules import RuleBook, default_rulebook
from archive.calib.select import Selection, explain_selection, masters_of, record_selection
from archive.config import Settings, load_settings
from archive.db.bulk import chunked
from archive.db.models import (
    CALIBRATION_KINDS,
    CalibrationSelection,
    Frame,
    Instrument,
    Master,
    Reduction,
    ReductionInput,
)
from archive.db.session import session_scope
from archive.errors import UnsafePathError
from archive.files import fits_stem, render_path, safe_component
from archive.progress import NoProgress, Progress
from archive import keywords as kw
from archive.reduce.align import (
    RegistrationJob,
    choose_reference,
    count_stars,
    register_file,
    wcs_cards,
)
from archive.reduce.calibrate import CalibrationJob, calibrate_light_file
from archive.reduce.config import ReductionConfig, load_reduction_config
from archive.reduce.executor import SerialExecutor
from archive.reduce.preview import write_preview
from archive.db.frames import canonical_paths
from archive.ingest.products import ProductRun, fail_product, record_product
from archive.db.provenance import (
    clear_selections,
    find_reduction,
    fingerprint,
    start_reduction,
)
from archive.reduce.stack import StackJob, stack_files

log = logging.getLogger(__name__)

#: Hex digits of the fingerprint in product names (``{fp}``) and of a stack's ``{group}``.
_FP_DIGITS, _GROUP_DIGITS = 12, 10


@dataclass
class ReduceSummary:
    """What a reduction run did.

    Attributes
    ----------
    calibrated, registered, stacked : list of str
        Products written (paths).
    unchanged : int
        Requests whose fingerprint already had a finished reduction (or a deterministic
        alignment failure), or that another live run is making.
    failures : list of (str, str)
        (what, reason): a light without masters, a frame that failed to align, an error.
    warnings : list of str
        Large shifts, missing master kinds, stack cards left out.
    by_group : dict
        "target / filter" -> counts of calibrated, registered, stacked, failed.
    """

    calibrated: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    stacked: list[str] = field(default_factory=list)
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    by_group: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def ok(self) -> bool:
        """Nothing failed."""
        return not self.failures

    def merge(self, other: ReduceSummary) -> None:
        """Add ``other``'s counts to these."""
        self.calibrated += other.calibrated
        self.registered += other.registered
        self.stacked += other.stacked
        self.unchanged += other.unchanged
        self.failures += other.failures
        self.warnings += other.warnings
        for group, counts in other.by_group.items():
            for key, value in counts.items():
                self.by_group[group][key] += value

    def fail(self, group: str, what: str, why: str) -> None:
        """Record one failure of ``group``."""
        self.failures.append((what, why))
        self.by_group[group]["failed"] += 1


def _group_name(frame: Frame) -> str:
    return f"{frame.target or '?'} / {frame.filter_name or '?'}"


def _frames(session: Session, ids: Iterable[int]) -> list[Frame]:
    """The frames ``ids`` (in IN lists of bounded size), by DATE-OBS then id (unknown dates last)."""
    frames = [f for batch in chunked(set(ids)) for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))]
    return sorted(frames, key=lambda f: (f.date_obs_s is None, f.date_obs_s or 0, f.id))


def _instrument_names(session: Session, frames: Iterable[Frame]) -> dict[int, str]:
    ids = {f.instrument_id for f in frames if f.instrument_id is not None}
    return dict(session.execute(select(Instrument.id, Instrument.name).where(Instrument.id.in_(ids))).all()) if ids else {}


def _layout(config: ReductionConfig, kind: str, frame: Frame, instruments: dict[int, str], fp: str,
            **values: Any) -> Path:
    """The output path of a product: the layout template (checked by
    :func:`archive.reduce.config.check_layout`) filled with :func:`archive.files.safe_component`
    values of ``frame`` (the light, or the first input of a stack) and ``values``; the path
    is checked to stay below the output root (:func:`archive.files.render_path`)."""
    exposure = frame.exposure_time_s
    fields = {
        "night": frame.night, "target": frame.target, "filter": frame.filter_name,
        "instrument": instruments.get(frame.instrument_id), "fp": fp[:_FP_DIGITS],
        "exposure": f"{exposure:g}" if exposure is not None else None, **values,
    }
    return render_path(config.products_root(), config.layout[kind], **{k: safe_component(v) for k, v in fields.items()})


def _file_fingerprint(path: Path) -> str | None:
    """The fingerprint written in a product's header, if the file exists and is readable."""
    try:
        return fits.getval(path, kw.FINGERPRINT)
    except (OSError, KeyError):
        return None


def _existing_output(output: Path, fp: str) -> bool:
    """True when ``output`` already holds this request's product (an interrupted run got past
    the rename): ingest it, do not compute it again.

    Raises
    ------
    FileExistsError
        Another file is at ``output`` (a product of other inputs or parameters, or a foreign
        file): it is never overwritten.
    """
    found = _file_fingerprint(output)
    if found == fp:
        return True
    if output.exists():
        raise FileExistsError(f"{output} already holds another product (fingerprint {found or 'none'}, this one "
                              f"{fp[:_FP_DIGITS]}): not overwritten")
    return False


def _submit(executor: Executor, output: Path, fp: str, found: dict, task, job) -> Future:
    """The future of making ``output``: ``task(job)`` in the executor; or done at once with
    ``found`` when ``output`` already holds this product (an interrupted run got past the
    rename); or failed with :class:`FileExistsError` when another file is there."""
    future: Future = Future()
    try:
        if not _existing_output(output, fp):
            return executor.submit(task, job)
        future.set_result(found)
    except FileExistsError as exc:
        future.set_exception(exc)
    return future


def _selections_linker(reduction_id: int, selections: Sequence[Selection]):
    """The ``link`` of :func:`archive.ingest.products.record_product` that stores the master
    selections a calibration used (replacing those of an interrupted attempt)."""

    def link(session: Session, frame_id: int) -> None:
        clear_selections(session, reduction_id)
        for selection in selections:
            record_selection(session, selection, reduction_id=reduction_id)

    return link


# -- calibration ---------------------------------------------------------------------------------


@dataclass
class _CalPlan:
    light_id: int
    group: str
    fingerprint: str
    job: CalibrationJob
    selections: list[Selection]
    inputs: list[tuple[int, str]]
    parameters: dict[str, Any]
    rule_version: str


def plan_calibration(
    session: Session, light: Frame, config: ReductionConfig, rules: RuleBook | None = None,
    libraries: dict[str, list] | None = None,
) -> _CalPlan | str:
    """The calibration request of one light, or the reason there is none.

    Masters are chosen by :func:`archive.calib.select.explain_selection` for bias, dark and
    flat; a kind with no master is left out of the calibration (a warning; ``archive stale``
    lists the product once a master exists). Returns a string when no master at all is found.
    ``libraries`` (kind -> :func:`archive.calib.select.masters_of`) saves loading the library
    again for every light.
    """
    libraries = libraries or {}
    selections = [explain_selection(session, light, kind, rules=rules, library=libraries.get(kind))
                  for kind in CALIBRATION_KINDS]
    found = [s for s in selections if s.found]
    if not found:
        return "no master bias, dark or flat: " + "; ".join(s.explanation for s in selections)
    master_ids = {mid for s in found for mid, _ in s.weights}
    masters = {f.id: f for f in session.scalars(select(Frame).where(Frame.id.in_(master_ids)))}
    paths = canonical_paths(session, master_ids | {light.id})
    if light.id not in paths:
        return "the light has no file on disk"
    missing_files = sorted(master_ids - set(paths))
    if missing_files:
        return f"master frame(s) #{', #'.join(map(str, missing_files))} have no file on disk"
    by_kind = {s.kind: s for s in found}
    fp_inputs = [(light.sha256, "light")]
    inputs = [(light.id, "light")]
    for s in found:
        for mid, weight in s.weights:
            fp_inputs.append((f"{masters[mid].sha256}*{weight:.9g}", f"master_{s.kind}"))
            inputs.append((mid, f"master_{s.kind}"))
    cal = config.calibrate
    parameters = {
        "cosmic_rays": bool(cal.get("cosmic_rays", False)), "cr_sigclip": float(cal.get("cr_sigclip", 4.5)),
        "flat_min_value": float(cal.get("flat_min_value", 0.01)),
        "dark_method": by_kind["dark"].method if "dark" in by_kind else "none",
        "masters": {s.kind: [[mid, w] for mid, w in s.weights] for s in found},
        "missing": [s.kind for s in selections if not s.found],
    }
    rule_version = found[0].rule_version
    fp = fingerprint("calibrate", fp_inputs, parameters, rule_version)
    output = _layout(config, "calibrated", light, _instrument_names(session, [light]), fp,
                     stem=fits_stem(paths[light.id]))
    job = CalibrationJob(
        light=paths[light.id], output=str(output), light_hdu=light.hdu_index,
        bias=paths[by_kind["bias"].weights[0][0]] if "bias" in by_kind else None,
        darks=tuple((paths[mid], w) for mid, w in by_kind["dark"].weights) if "dark" in by_kind else (),
        dark_method=parameters["dark_method"],
        flat=paths[by_kind["flat"].weights[0][0]] if "flat" in by_kind else None,
        cosmic_rays=parameters["cosmic_rays"], cr_sigclip=parameters["cr_sigclip"],
        flat_min_value=parameters["flat_min_value"],
        header={kw.REDUCTION_STEP: "calibrate", kw.FINGERPRINT: fp},
    )
    return _CalPlan(light.id, _group_name(light), fp, job, selections, inputs, parameters, rule_version)


def calibrate_lights(
    engine: Engine, light_ids: Sequence[int], *, config: ReductionConfig, products: ProductRun,
    executor: Executor, rules: RuleBook, progress: Progress | None = None,
    summary: ReduceSummary | None = None,
) -> ReduceSummary:
    """Calibrate the lights ``light_ids``, each once per fingerprint (see the module docstring).

    Parameters
    ----------
    engine : Engine
        The catalogue; each calibrated frame is its own unit of work.
    light_ids : sequence of int
        Raw light frames (any number: looked up in bounded IN lists).
    config : ReductionConfig
        ``[calibrate]`` parameters and the output layout.
    products : ProductRun
        The ingest run the products join (:mod:`archive.ingest.products`).
    executor : Executor
        Where the pixel work runs (:mod:`archive.reduce.executor`).
    rules : RuleBook
        Matching rules for master selection.
    progress : Progress, optional
    summary : ReduceSummary, optional
        Added to and returned (default a new one).

    Returns
    -------
    ReduceSummary
        Products written, requests already done, and one failure per light that has no
        master, cannot be read or written, or whose output path holds another product. A
        failed calibration is recorded as a ``failed`` reduction and tried again next run.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The catalogue cannot be read or written (nothing per light is raised).
    """
    summary = summary if summary is not None else ReduceSummary()
    progress = progress or NoProgress()
    todo: list[_CalPlan] = []
    with session_scope(engine) as session:
        libraries = {kind: masters_of(session, kind) for kind in CALIBRATION_KINDS}
        for light in _frames(session, light_ids):
            try:
                plan = plan_calibration(session, light, config, rules, libraries)
            except UnsafePathError as exc:  # a symlink below the products folder leading out of it
                plan = str(exc)
            if isinstance(plan, str):
                summary.fail(_group_name(light), f"calibrate light #{light.id} ({_group_name(light)})", plan)
                continue
            reduction = find_reduction(session, plan.fingerprint)
            if reduction is not None and reduction.status == "done":
                summary.unchanged += 1
                continue
            for s in plan.selections:
                if not s.found:
                    summary.warnings.append(f"light #{light.id}: calibrated without a {s.kind}: {s.explanation}")
            todo.append(plan)
    progress.start(len(todo), "calibrating")
    futures: dict[Future, tuple[_CalPlan, int]] = {}
    for plan in todo:
        with session_scope(engine, write=True) as session:
            reduction = start_reduction(session, "calibrate", plan.fingerprint, plan.parameters, plan.rule_version,
                                        plan.inputs)
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # made meanwhile, or being made, by another run
            summary.unchanged += 1
            progress.advance()
            continue
        future = _submit(executor, Path(plan.job.output), plan.fingerprint, {"output": plan.job.output},
                         calibrate_light_file, plan.job)
        futures[future] = (plan, reduction_id)
    for future in as_completed(futures):
        plan, reduction_id = futures[future]
        try:
            future.result()
            record_product(products, reduction_id, plan.job.output, link=_selections_linker(reduction_id, plan.selections))
            summary.calibrated.append(plan.job.output)
            summary.by_group[plan.group]["calibrated"] += 1
        except Exception as exc:  # noqa: BLE001 - one light's failure is recorded; the loop goes on
            log.warning("calibrating %s failed: %s", plan.job.light, exc)
            fail_product(engine, reduction_id, f"{type(exc).__name__}: {exc}")
            summary.fail(plan.group, f"calibrate {plan.job.light}", str(exc))
        progress.advance()
    progress.finish()
    return summary


# -- registration and stacking -------------------------------------------------------------------


def _group_key(frame: Frame, per_night: bool) -> tuple:
    return (frame.instrument_id, frame.target_key, (frame.filter_name or "").lower(), frame.night if per_night else None)


def current_calibrated(session: Session, light_ids: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
    """light id -> (calibrated frame id, reduction id) of each light's latest finished calibration."""
    def query(batch: list[int] | None):
        latest = (
            select(ReductionInput.frame_id.label("light_id"), func.max(Reduction.id).label("rid"))
            .join(Reduction, Reduction.id == ReductionInput.reduction_id)
            .where(Reduction.step == "calibrate", Reduction.status == "done", ReductionInput.role == "light")
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


def _group_members(session: Session, lights: Sequence[Frame], per_night: bool) -> dict[tuple, list[tuple[Frame, Frame]]]:
    """Registration groups touched by ``lights``: key -> [(light, current calibrated frame)] of
    every light of the group that has one, ordered by DATE-OBS."""
    keys = {_group_key(light, per_night) for light in lights}
    out: dict[tuple, list[tuple[Frame, Frame]]] = defaultdict(list)
    for instrument_id, target_key, filter_name, night in keys:
        query = select(Frame).where(Frame.image_type == "light", Frame.duplicate_of_id.is_(None))
        query = query.where(Frame.instrument_id == instrument_id if instrument_id is not None else Frame.instrument_id.is_(None))
        query = query.where(Frame.target_key == target_key if target_key is not None else Frame.target_key.is_(None))
        query = query.where(func.lower(func.coalesce(Frame.filter_name, "")) == filter_name)
        if per_night:
            query = query.where(Frame.night == night)
        members = list(session.scalars(query.order_by(Frame.date_obs_s, Frame.id)))
        current = current_calibrated(session, [m.id for m in members])
        calibrated = {f.id: f for f in _frames(session, [c for c, _ in current.values()])}
        out[(instrument_id, target_key, filter_name, night)] = [
            (m, calibrated[current[m.id][0]]) for m in members if m.id in current
        ]
    return out


def _settled(status: str, parameters: dict[str, Any] | None) -> bool:
    """A registration not to be tried again: done, or failed to align (deterministic)."""
    return status == "done" or (status == "failed" and (parameters or {}).get("failure") == "alignment")


def _registration_state(session: Session, calibrated_ids: Sequence[int], group_hash: str) -> dict[int, tuple[str, int | None]]:
    """calibrated frame id -> (status, registered frame id) of the settled registrations
    (:func:`_settled`) made for this group."""
    state: dict[int, tuple[str, int | None]] = {}
    for batch in chunked(calibrated_ids):
        rows = session.execute(
            select(ReductionInput.frame_id, Reduction.status, Reduction.parameters, Frame.id)
            .join(Reduction, Reduction.id == ReductionInput.reduction_id)
            .outerjoin(Frame, Frame.reduction_id == Reduction.id)
            .where(Reduction.step == "register", ReductionInput.role == "input", ReductionInput.frame_id.in_(batch))
            .order_by(Reduction.id)
        )
        for cid, status, params, out_id in rows:
            if (params or {}).get("group") == group_hash and _settled(status, params):
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
    and stacked per exposure time (at least two frames per stack).

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
        ``failed`` reductions with ``parameters['failure'] = 'alignment'`` and not tried again
        with the same inputs; other failures (of a frame or a stack) are tried again next run.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The catalogue cannot be read; a group whose bookkeeping fails is recorded as a
        failure and the next group goes on.
    """
    summary = summary if summary is not None else ReduceSummary()
    per_night = bool(config.stack.get("per_night", False))
    with session_scope(engine) as session:
        lights = _frames(session, light_ids)
        groups = _group_members(session, lights, per_night)
    for key, members in groups.items():
        if not members:
            continue
        name = _group_name(members[0][0])
        try:
            registered = _register_group(engine, key, members, config=config, products=products,
                                         executor=executor, progress=progress, summary=summary, name=name)
            _stack_group(engine, registered, config=config, products=products, executor=executor,
                         summary=summary, name=name)
        except Exception as exc:
            log.exception("group %s failed", name)
            summary.fail(name, f"register/stack {name}", f"{type(exc).__name__}: {exc}")
    return summary


def _count_stars_all(
    executor: Executor, members: list[tuple[Frame, Frame]], paths: dict[int, str], parameters: dict[str, Any],
    summary: ReduceSummary, name: str, progress: Progress,
) -> tuple[list[tuple[Frame, Frame]], dict[str, dict]]:
    """Detect stars in every member's calibrated frame; a frame that cannot be read is recorded
    as a failure and left out. Returns the members kept (in order) and the results by path."""
    futures: dict[Future, tuple[Frame, Frame]] = {}
    kept: list[tuple[Frame, Frame]] = []
    for light, cal in members:
        path = paths.get(cal.id)
        if path is None:
            summary.fail(name, f"register calibrated frame #{cal.id}", "no file on disk")
            continue
        futures[executor.submit(count_stars, path, parameters["detect_sigma"], parameters["max_control_points"])] = (light, cal)
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
        instruments = _instrument_names(session, [light for light, _ in members])
    if all(c.id in state for c in calibrated):
        summary.unchanged += len(calibrated)
        return [state[c.id][1] for c in calibrated if state[c.id][0] == "done" and state[c.id][1] is not None]
    parameters = {
        "reference_rule": reg.get("reference", "most_stars"), "detect_sigma": float(reg.get("detect_sigma", 5.0)),
        "max_control_points": int(reg.get("max_control_points", 50)),
        "max_shift_fraction": float(reg.get("max_shift_fraction", 0.15)), "interpolation": "bilinear",
    }
    members, stars = _count_stars_all(executor, members, paths, parameters, summary, name, progress)
    if not members:
        return []
    ordered = [paths[c.id] for _, c in members]
    reference_path = choose_reference([(p, stars[p]["n_stars"]) for p in ordered])
    reference = members[ordered.index(reference_path)][1]
    reference_wcs = wcs_cards(fits.getheader(reference_path))
    out_ids: list[int] = []
    futures: dict[Future, tuple[RegistrationJob, int]] = {}
    for light, cal in members:
        path = paths[cal.id]
        params = {**parameters, "n_stars": stars[path]["n_stars"], "reference_stars": stars[reference_path]["n_stars"]}
        fp = fingerprint("register", [(cal.sha256, "input"), (reference.sha256, "reference")],
                         {k: v for k, v in params.items() if k not in ("n_stars", "reference_stars")}, None)
        try:
            output = _layout(config, "registered", light, instruments, fp, stem=fits_stem(paths.get(light.id, path)))
        except UnsafePathError as exc:
            summary.fail(name, f"register {path}", str(exc))
            continue
        with session_scope(engine, write=True) as session:
            existing = find_reduction(session, fp)
            if existing is not None and _settled(existing.status, existing.parameters):
                # same source and reference as before: adopt it for the current group membership
                existing.parameters = {**existing.parameters, "group": group_hash}
                out = session.scalar(select(Frame.id).where(Frame.reduction_id == existing.id))
                summary.unchanged += 1
                if existing.status == "done" and out is not None:
                    out_ids.append(out)
                continue
            reduction = start_reduction(session, "register", fp, {**params, "group": group_hash}, None,
                                        [(cal.id, "input"), (reference.id, "reference")])
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # made meanwhile, or being made, by another run
            summary.unchanged += 1
            continue
        job = RegistrationJob(
            source=path, output=str(output), reference=reference_path, source_xy=stars[path]["xy"],
            reference_xy=stars[reference_path]["xy"], max_shift_fraction=parameters["max_shift_fraction"],
            reference_wcs=reference_wcs, header={kw.REDUCTION_STEP: "register", kw.FINGERPRINT: fp},
            max_control_points=parameters["max_control_points"],
        )
        future = _submit(executor, output, fp, {"ok": True, "output": str(output), "warning": None}, register_file, job)
        futures[future] = (job, reduction_id)
    for future in as_completed(futures):
        job, reduction_id = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - not an alignment failure: tried again next run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if not result["ok"]:
            log.warning("%s: not registered, left out of the stack: %s", job.source, result["error"])
            fail_product(engine, reduction_id, result["error"], failure=result.get("failure"))
            summary.fail(name, f"register {job.source}", result["error"])
            continue
        if result.get("warning"):
            log.warning(result["warning"])
            summary.warnings.append(result["warning"])
        extra = {k: result[k] for k in ("dx", "dy", "rotation_deg", "scale") if k in result}
        try:
            out_ids.append(record_product(products, reduction_id, job.output, results=extra))
        except Exception as exc:  # noqa: BLE001 - one frame's failure is recorded; the group goes on
            log.warning("%s: registered but not catalogued, left out of the stack: %s", job.output, exc)
            fail_product(engine, reduction_id, f"{type(exc).__name__}: {exc}")
            summary.fail(name, f"register {job.source}", f"{type(exc).__name__}: {exc}")
            continue
        summary.registered.append(job.output)
        summary.by_group[name]["registered"] += 1
    return out_ids


def _stack_group(
    engine: Engine, registered_ids: list[int], *, config: ReductionConfig, products: ProductRun,
    executor: Executor, summary: ReduceSummary, name: str,
) -> None:
    """Stack the registered frames per exposure time (at least two frames per stack)."""
    st = config.stack
    parameters = {"method": st.get("method", "median"), "sigma": float(st.get("sigma", 3.0)),
                  "iterations": int(st.get("iterations", 5)), "memory_limit_mb": float(st.get("memory_limit_mb", 512))}
    fp_parameters = {k: v for k, v in parameters.items() if k != "memory_limit_mb"}
    with session_scope(engine) as session:
        frames = _frames(session, registered_ids)
        paths = canonical_paths(session, registered_ids)
        instruments = _instrument_names(session, frames)
    by_exposure: dict[float | None, list[Frame]] = defaultdict(list)
    for frame in frames:
        if frame.id not in paths:
            summary.warnings.append(f"{name}: registered frame #{frame.id} has no file on disk, not stacked")
            continue
        by_exposure[frame.exposure_time_s].append(frame)
    for exposure, members in by_exposure.items():
        if len(members) < 2:
            summary.warnings.append(f"{name}: {len(members)} registered frame(s) of {exposure} s, not stacked")
            continue
        fp = fingerprint("stack", [(f.sha256, "input") for f in members], fp_parameters, None)
        try:
            output = _layout(config, "stacked", members[0], instruments, fp, group=fp[:_GROUP_DIGITS])
        except UnsafePathError as exc:
            summary.fail(name, f"stack {name} ({exposure} s)", str(exc))
            continue
        with session_scope(engine, write=True) as session:
            reduction = start_reduction(session, "stack", fp, parameters, None, [(f.id, "input") for f in members])
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # done, or being made by another run
            summary.unchanged += 1
            continue
        job = StackJob(inputs=tuple(paths[f.id] for f in members), output=str(output), method=parameters["method"],
                       sigma=parameters["sigma"], iterations=parameters["iterations"],
                       memory_limit_mb=parameters["memory_limit_mb"],
                       header={kw.REDUCTION_STEP: "stack", kw.FINGERPRINT: fp},
                       exposures_s=tuple(f.exposure_time_s for f in members),
                       dates_obs=tuple(f.date_obs.isoformat() if f.date_obs else None for f in members))
        try:
            if not _existing_output(output, fp):
                result = stack_files(job, executor=executor, parts=int(config.executor.get("workers") or os.cpu_count() or 1))
                summary.warnings += result["warnings"]
            if config.previews:
                write_preview(output)
            record_product(products, reduction_id, output)
        except Exception as exc:  # noqa: BLE001 - recorded; tried again next run
            fail_product(engine, reduction_id, f"{type(exc).__name__}: {exc}")
            summary.fail(name, f"stack {output.name}", str(exc))
            continue
        summary.stacked.append(str(output))
        summary.by_group[name]["stacked"] += 1


def reduce_lights(
    engine: Engine, light_ids: Sequence[int], *, config: ReductionConfig | None = None,
    settings: Settings | None = None, executor: Executor | None = None, rules: RuleBook | None = None,
    register: bool = True, progress: Progress | None = None, products: ProductRun | None = None,
) -> ReduceSummary:
    """Calibrate the lights ``light_ids``, then register and stack the groups they belong to.

    Parameters
    ----------
    engine : Engine
        The catalogue; each product is its own transaction (see the module docstring).
    light_ids : sequence of int
        Raw light frames.
    config : ReductionConfig, optional
        Default :func:`archive.reduce.config.load_reduction_config`.
    settings : Settings, optional
        Configured sites and the user's rules (default :func:`archive.config.load_settings`).
    executor : Executor, optional
        Where pixel work runs (default: in this process); see :mod:`archive.reduce.executor`.
    rules : RuleBook, optional
        Matching rules for master selection (default the bundled ``configs/matching``).
    register : bool
        Also register and stack (default True).
    progress : Progress, optional
    products : ProductRun, optional
        The ingest run the products join (default one of their own, closed at the end).

    Returns
    -------
    ReduceSummary
        Failures are recorded there (and as ``failed`` reductions), never raised per frame.
    """
    settings = settings or load_settings()
    config = config or load_reduction_config(settings)
    rules = rules if rules is not None else default_rulebook(settings)
    executor = executor or SerialExecutor()
    own_run = products is None
    products = products or ProductRun(engine, config.products_root(), sites=settings.sites)
    try:
        summary = calibrate_lights(engine, light_ids, config=config, products=products, executor=executor, rules=rules,
                                   progress=progress)
        if register:
            register_and_stack(engine, light_ids, config=config, products=products, executor=executor,
                               progress=progress, summary=summary)
    finally:
        if own_run:
            products.close()
    return summary


# -- stale products --------------------------------------------------------------------------------


@dataclass
class StaleProduct:
    """A product whose inputs would now be chosen differently.

    Attributes
    ----------
    frame_id : int
    path : str or None
    step : str
        calibrate, register or stack.
    light_id : int or None
        For a calibrated frame, the raw light to calibrate again.
    reasons : list of str
        Why: a master marked bad, a better master, a master now available, a rule change, or
        (for registered and stacked frames) a stale input.
    """

    frame_id: int
    path: str | None
    step: str
    light_id: int | None
    reasons: list[str]


def _recorded_masters(row: CalibrationSelection) -> set[int]:
    if row.method == "interpolated" and row.detail and row.detail.get("weights"):
        return {int(mid) for mid, _ in row.detail["weights"]}
    return {row.master_id} if row.master_id is not None else set()


def find_stale(session: Session, *, rules: RuleBook | None = None) -> list[StaleProduct]:
    """Products whose inputs would now be chosen differently, and everything made from them.

    For the current calibrated frame of every light, the masters are selected again by the
    current rules (:func:`archive.calib.select.explain_selection`) and compared with the
    selections stored with its reduction: a master since marked bad or outside its validity, a
    better master built or ingested since, a master now found where none was, a changed rule
    version. Registered and stacked frames made from a stale calibrated frame are stale too.

    Returns
    -------
    list of StaleProduct
        Calibrated frames first (by light), then the products made from them.
    """
    current = current_calibrated(session)
    out: list[StaleProduct] = []
    stale_cal: list[int] = []
    lights = {f.id: f for f in _frames(session, current)}
    libraries = {kind: masters_of(session, kind) for kind in CALIBRATION_KINDS}
    rules = rules if rules is not None else default_rulebook()
    for light_id, (cal_id, rid) in sorted(current.items()):
        light = lights[light_id]
        recorded = {row.kind: row for row in session.scalars(
            select(CalibrationSelection).where(CalibrationSelection.reduction_id == rid))}
        reasons = []
        for kind in CALIBRATION_KINDS:
            new = explain_selection(session, light, kind, rules=rules, library=libraries[kind])
            old = recorded.get(kind)
            old_ids = _recorded_masters(old) if old is not None else set()
            new_ids = {mid for mid, _ in new.weights}
            bad = [m.frame_id for m in session.scalars(select(Master).where(Master.frame_id.in_(old_ids), Master.is_bad))]
            if bad:
                reasons.append(f"{kind} master #{', #'.join(map(str, bad))} marked bad")
            if old is not None and new.rule_version != old.rule_version:
                reasons.append(f"{kind} rules changed ({old.rule_version} -> {new.rule_version})")
            if old_ids != new_ids:
                if not old_ids:
                    reasons.append(f"a {kind} master is now available (#{', #'.join(map(str, sorted(new_ids)))})")
                elif not new_ids:
                    if not bad:
                        reasons.append(f"{kind} master #{', #'.join(map(str, sorted(old_ids)))} no longer selected: "
                                       f"{new.explanation}")
                else:
                    reasons.append(f"{kind}: master #{', #'.join(map(str, sorted(new_ids)))} ({new.method}) would be "
                                   f"chosen instead of #{', #'.join(map(str, sorted(old_ids)))}")
        if reasons:
            stale_cal.append(cal_id)
            out.append(StaleProduct(cal_id, None, "calibrate", light_id, list(dict.fromkeys(reasons))))
    from archive.db.provenance import used_by

    seen = {p.frame_id for p in out}
    for cal_id in stale_cal:
        for product in used_by(session, session.get(Frame, cal_id)):
            if product["frame_id"] not in seen:
                seen.add(product["frame_id"])
                out.append(StaleProduct(product["frame_id"], product["path"], product["step"], None,
                                        [f"made from stale calibrated frame #{cal_id}"]))
    paths = canonical_paths(session, [p.frame_id for p in out])
    for product in out:
        product.path = product.path or paths.get(product.frame_id)
    return out
