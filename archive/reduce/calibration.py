"""Calibrating lights: plan each light's calibration (masters chosen by query, the
fingerprint, the output path), run the pixel work, record each calibrated frame
(:mod:`archive.ingest.products`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from archive.calib.overscan import detector_geometry
from archive.calib.required import kinds_in_library, required_kinds
from archive.calib.rules import RuleBook
from archive.calib.select import explain_selection, masters_of, record_selection
from archive.calib.selection import Selection, rules_for
from archive.db.models import (
    BADPIX,
    CALIBRATION_KINDS,
    DARK_MODEL,
    MASTER_KINDS,
    Frame,
    Reduction,
)
from archive.db.session import session_scope
from archive.errors import UnsafePathError
from archive.files import fits_stem
from archive.progress import NoProgress, Progress
from archive import keywords as kw
from archive.reduce.calibrate import CalibrationJob, calibrate_light_file
from archive.reduce.colour import check_demosaic_method
from archive.reduce.config import ReductionConfig
from archive.db.frames import canonical_paths, instrument_names
from archive.ingest.cards import header_from_text
from archive.ingest.products import ProductRun, fail_product, record_product
from archive.db.prune import product_pruned
from archive.db.provenance import (
    clear_selections,
    find_reduction,
    fingerprint,
    lineage_of,
    reuse_product,
    start_reduction,
)

from archive.reduce.summary import ReduceSummary, group_name
from archive.reduce.outputs import frames_by_id, output_path, submit_product

log = logging.getLogger(__name__)


def _selections_linker(reduction_id: int, selections: Sequence[Selection]):
    """The ``link`` of :func:`archive.ingest.products.record_product` that stores the master
    selections a calibration used (replacing those of an interrupted attempt)."""

    def link(session: Session, frame_id: int) -> None:
        clear_selections(session, reduction_id)
        for selection in selections:
            record_selection(session, selection, reduction_id=reduction_id)

    return link


# -- calibration ---------------------------------------------------------------------------------


class LackingMasters(str):
    """The reason a light has no calibration request when it lacks a required master (a
    ``str``, as :func:`plan_calibration`'s other reasons): it can be calibrated once one arrives."""


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
    session: Session, light: Frame, config: ReductionConfig, rules: RuleBook,
    libraries: dict[str, list] | None = None, library_kinds: dict | None = None,
) -> _CalPlan | str:
    """The calibration request of one light, or the reason there is none.

    Masters are chosen by :func:`archive.calib.select.explain_selection` for bias, dark and
    flat, and the bad-pixel mask (applied when one is found, never required: its pixels become
    NaN). A kind the instrument requires (:func:`archive.calib.required.required_kinds`:
    ``required`` of its matching rules) without a master stops the light here: the reason is
    returned. A kind it does not require is applied when a master is found and left out
    otherwise; a light that requires nothing and finds nothing is passed on uncalibrated
    (its header's steps say so). ``libraries`` (kind -> :func:`archive.calib.select.masters_of`)
    and ``library_kinds`` (:func:`archive.calib.required.kinds_in_library`) save loading the
    library again for every light.
    """
    libraries = libraries or {}
    library_kinds = library_kinds if library_kinds is not None else kinds_in_library(session)
    instrument = instrument_names(session, [light.instrument_id]).get(light.instrument_id)
    required = required_kinds(rules_for(rules, instrument), light.instrument_id, library_kinds)
    selections = [explain_selection(session, light, kind, rules=rules, library=libraries.get(kind),
                                    models=libraries.get(DARK_MODEL)) for kind in CALIBRATION_KINDS]
    lacking = [s for s in selections if not s.found and s.kind in required]
    if lacking:
        return LackingMasters("; ".join(f"no master {s.kind} (required): {s.explanation}" for s in lacking))
    mask = explain_selection(session, light, BADPIX, rules=rules, library=libraries.get(BADPIX))
    if mask.found:  # applied (and recorded) when found, never required
        selections = selections + [mask]
    found = [s for s in selections if s.found]
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
        "missing": [s.kind for s in selections if not s.found],  # calibrations only: a found mask is never missing
    }
    if light.bayer_pattern:  # demosaiced after calibration (only then: mono fingerprints unchanged)
        parameters["demosaic"] = {"method": check_demosaic_method(str(cal.get("demosaic", "bilinear"))),
                                  "pattern": light.bayer_pattern}
    geometry = detector_geometry(header_from_text(light.header), (light.naxis2 or 0, light.naxis1 or 0), instrument)
    parameters.update(geometry.parameters)  # only when a section applies: other fingerprints unchanged
    if geometry.notes:
        parameters["geometry_notes"] = list(geometry.notes)
    rule_version = selections[0].rule_version
    fp = fingerprint("calibrate", fp_inputs, parameters, rule_version)
    output = output_path(config, "calibrated", light, instrument_names(session, [light.instrument_id]), fp,
                     stem=fits_stem(paths[light.id]))
    job = CalibrationJob(
        light=paths[light.id], output=str(output), light_hdu=light.hdu_index,
        bias=paths[by_kind["bias"].weights[0][0]] if "bias" in by_kind else None,
        darks=tuple((paths[mid], w) for mid, w in by_kind["dark"].weights) if "dark" in by_kind else (),
        dark_method=parameters["dark_method"],
        flat=paths[by_kind["flat"].weights[0][0]] if "flat" in by_kind else None,
        bad_pixels=paths[by_kind[BADPIX].weights[0][0]] if BADPIX in by_kind else None,
        cosmic_rays=parameters["cosmic_rays"], cr_sigclip=parameters["cr_sigclip"],
        flat_min_value=parameters["flat_min_value"],
        header={kw.REDUCTION_STEP: "calibrate", kw.FINGERPRINT: fp},
        overscan=geometry.overscan, trim=geometry.trim,
        bayer_pattern=light.bayer_pattern,
        demosaic=parameters["demosaic"]["method"] if light.bayer_pattern else "bilinear",
    )
    return _CalPlan(light.id, group_name(light), fp, job, selections, inputs, parameters, rule_version)


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
    reused: list[tuple[int, int]] = []  # (done reduction, light) chosen again
    without: Counter = Counter()  # (group, kind) -> lights calibrated without a master the library has
    with session_scope(engine) as session:
        libraries = {kind: masters_of(session, kind) for kind in MASTER_KINDS}
        library_kinds = kinds_in_library(session)
        any_kinds = kinds_in_library(session, include_bad=True)
        for light in frames_by_id(session, light_ids):
            try:
                plan = plan_calibration(session, light, config, rules, libraries, library_kinds)
            except UnsafePathError as exc:  # a symlink below the products folder leading out of it
                plan = str(exc)
            if isinstance(plan, str):
                summary.fail(group_name(light), f"calibrate light #{light.id} ({group_name(light)})", plan)
                if isinstance(plan, LackingMasters):
                    summary.waiting.append(light.id)
                continue
            reduction = find_reduction(session, plan.fingerprint)
            if reduction is not None and reduction.status == "done" and not product_pruned(session, reduction.id):
                summary.unchanged += 1
                reused.append((reduction.id, light.id))
                continue
            for s in plan.selections:
                if not s.found and s.kind in any_kinds.get(light.instrument_id, ()):
                    without[(plan.group, s.kind)] += 1
            todo.append(plan)
    if reused:  # chosen again: current again if superseded since (a master marked bad, then good)
        with session_scope(engine, write=True) as session:
            for reduction_id, light_id in reused:
                reuse_product(session, session.get(Reduction, reduction_id), lineage_of("calibrate", light_id))
    for (group, kind), n in sorted(without.items()):
        summary.warnings.append(f"{group}: {n} light(s) calibrated without a master {kind}: the library's are "
                                f"marked bad or do not match, and {kind} is not required ('archive masters missing' "
                                f"says what to shoot)")
    progress.start(len(todo), "calibrating")
    futures: dict[Future, tuple[_CalPlan, int]] = {}
    for plan in todo:
        with session_scope(engine, write=True) as session:
            reduction = start_reduction(session, "calibrate", plan.fingerprint, plan.parameters, plan.rule_version,
                                        plan.inputs, lineage=lineage_of("calibrate", plan.light_id))
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # made meanwhile, or being made, by another run
            summary.unchanged += 1
            progress.advance()
            continue
        future = submit_product(executor, Path(plan.job.output), plan.fingerprint, {"output": plan.job.output},
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
