"""Stacking a group's registered frames per exposure time (at least two frames a stack)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import Executor

from sqlalchemy import Engine

from archive.db.models import (
    Frame,
)
from archive.db.session import session_scope
from archive.errors import UnsafePathError
from archive import keywords as kw
from archive.reduce.config import ReductionConfig
from archive.reduce.preview import write_preview
from archive.db.frames import canonical_paths, instrument_names
from archive.ingest.products import ProductRun, fail_product, record_product
from archive.db.provenance import (
    fingerprint,
    lineage_of,
    start_reduction,
)
from archive.reduce.stack import StackJob, stack_files
from archive.reduce.quality_stacks import stack_exclusions

from archive.reduce.summary import ReduceSummary
from archive.reduce.outputs import GROUP_DIGITS, existing_output, frames_by_id, output_path

log = logging.getLogger(__name__)


def stack_group(
    engine: Engine, registered_ids: list[int], *, config: ReductionConfig, products: ProductRun,
    executor: Executor, summary: ReduceSummary, name: str, rejected: dict[int, str] | None = None,
) -> None:
    """Stack the registered frames per exposure time (at least two frames per stack).

    Frames whose light is rejected by its quality verdict (:func:`archive.reduce.quality_stacks.
    stack_exclusions`), and the lights ``rejected`` (light id -> reason) the caller left out
    before registering, are listed in ``summary.rejected`` and, with their reasons, in the
    stack reduction's ``parameters['rejected']``. With ``[stack] weights = 'signal'``
    the lights' signal weights (:mod:`archive.reduce.measure`; 1 for a light never measured)
    are the combine engine's per-frame weights (mean and sigma-clipped mean; the median is
    unweighted, with a warning).
    """
    st = config.stack
    parameters = {k: st[k] for k in ("method", "sigma_low", "sigma_high", "maxiters", "memory_limit_mb")}
    parameters["normalization"] = st.get("normalization", "none")
    with session_scope(engine, write=True) as session:  # judging the lights writes their flags
        kept_ids, found, weights = stack_exclusions(session, registered_ids)
        rejected = {**(rejected or {}), **found}
        frames = frames_by_id(session, kept_ids)
        paths = canonical_paths(session, kept_ids)
        instruments = instrument_names(session, [f.instrument_id for f in frames])
        rejected_exposure = {f.id: f.exposure_time_s for f in frames_by_id(session, rejected)}
    for light_id, reason in sorted(rejected.items()):
        summary.reject(name, f"{name}: light #{light_id}", reason)
    use_weights = st.get("weights", "none") == "signal"
    if use_weights:
        parameters["weights"] = "signal"
    by_exposure: dict[float | None, list[Frame]] = defaultdict(list)
    for frame in frames:
        if frame.id not in paths:
            summary.warnings.append(f"{name}: registered frame #{frame.id} has no file on disk, not stacked")
            continue
        by_exposure[frame.exposure_time_s].append(frame)
    base = parameters
    for exposure, members in by_exposure.items():
        if len(members) < 2:
            summary.warnings.append(f"{name}: {len(members)} registered frame(s) of {exposure} s, not stacked")
            continue
        fp_parameters = {k: v for k, v in base.items() if k != "memory_limit_mb"}
        first = members[0]
        # the stack's identity across membership changes, and the lights left out by their
        # quality verdict, with the reasons (provenance; neither is in the fingerprint)
        units = {f.instrument_id for f in members}
        model = instruments[first.instrument_id].model if first.instrument_id in instruments else None
        parameters = {**base, "group_key": "|".join(str(v) for v in (
            model, first.target_key, (first.filter_name or "").lower(),
            first.night if st.get("per_night") else "", exposure))}
        left_out = {str(k): v for k, v in sorted(rejected.items()) if rejected_exposure.get(k) == exposure}
        if left_out:
            parameters["rejected"] = left_out
        fp = fingerprint("stack", [(f.sha256, "input") for f in members], fp_parameters, None)
        try:
            # a stack of several units of one model is the model's: named after it, and without
            # the keywords that gave the units' serials (it is catalogued as the model)
            named = instruments if len(units) == 1 else {first.instrument_id: model}
            output = output_path(config, "stacked", members[0], named, fp, group=fp[:GROUP_DIGITS])
        except UnsafePathError as exc:
            summary.fail(name, f"stack {name} ({exposure} s)", str(exc))
            continue
        with session_scope(engine, write=True) as session:
            reduction = start_reduction(session, "stack", fp, parameters, None, [(f.id, "input") for f in members],
                                        lineage=lineage_of("stack", parameters["group_key"]))
            reduction_id = reduction.id if reduction is not None else None
        if reduction_id is None:  # done, or being made by another run
            summary.unchanged += 1
            continue
        extra = {}
        if use_weights:
            if parameters["method"] == "median":
                summary.warnings.append(f"{name}: [stack] weights = 'signal' needs method 'mean' or 'sigma_clip'; "
                                        "the median is unweighted")
            else:  # the combine engine takes one weight per input
                extra["weights"] = tuple(1.0 if weights.get(f.id) is None else float(weights[f.id]) for f in members)
        job = StackJob(**extra, inputs=tuple(paths[f.id] for f in members), output=str(output), method=parameters["method"],
                       sigma_low=parameters["sigma_low"], sigma_high=parameters["sigma_high"],
                       maxiters=parameters["maxiters"], memory_limit_mb=parameters["memory_limit_mb"],
                       normalization=parameters["normalization"],
                       header={kw.REDUCTION_STEP: "stack", kw.FINGERPRINT: fp},
                       drop=tuple(sorted({f.sources.get("instrument_serial") for f in members} - {None}))
                       if len(units) > 1 else (),
                       exposures_s=tuple(f.exposure_time_s for f in members),
                       dates_obs=tuple(f.date_obs.isoformat() if f.date_obs else None for f in members))
        try:
            if not existing_output(output, fp):
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
