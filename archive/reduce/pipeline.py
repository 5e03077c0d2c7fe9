"""Reducing lights into calibrated, registered and stacked products, with provenance.

Each product is its own unit of work, in this order:

1. its reduction row is committed as ``running`` with its inputs (a later run takes the same
   row up again: no duplicate);
2. the pixels are computed in the executor and written to a temporary name, then renamed;
3. one transaction catalogues the file (:func:`archive.ingest.products.record_product`), links
   it to the reduction, stores the master selections used and marks the reduction ``done``.

The steps live in :mod:`~archive.reduce.calibration`, :mod:`~archive.reduce.registration`
and :mod:`~archive.reduce.stacking` (catalogue side) over the pixel functions of
:mod:`~archive.reduce.calibrate`, :mod:`~archive.reduce.align` and :mod:`~archive.reduce.stack`;
output paths in :mod:`~archive.reduce.outputs`; stale products in :mod:`~archive.reduce.stale`.

A request whose fingerprint (:func:`archive.db.provenance.fingerprint`: step, input files
and roles, parameters, rule version) already has a ``done`` reduction is skipped, so running
twice does nothing the second time; a file already at the output path carrying the request's
fingerprint (an interrupted run got past the rename) is ingested and linked, not recomputed. A
file at the output path with another fingerprint is never overwritten (a failure). Output
names carry the start of the fingerprint (``{fp}`` in the layouts), so two lights of the same
file name (two rigs, a counter restarting per session) get two products.

Failures: a frame that cannot be read or written is recorded and left out, and tried again
next run; a frame that does not align is recorded as ``failed`` with
``failure_kind = 'alignment'`` and not tried again with the same inputs.

Grouping: lights are registered per instrument, target and filter (and night when
``[stack] per_night``), onto one reference per group; stacks are made per group and exposure
time. The *current* calibrated frame of a light is the output of its latest finished
calibration; a group's current registered frames are those registered for its current
membership (``Reduction.group_key``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor

from sqlalchemy import Engine

from archive.calib.rules import RuleBook, default_rulebook
from archive.config import Settings, load_settings
from archive.progress import Progress
from archive.reduce.config import ReductionConfig, load_reduction_config
from archive.reduce.executor import SerialExecutor
from archive.ingest.products import ProductRun

from archive.reduce.summary import ReduceSummary
from archive.reduce.calibration import calibrate_lights
from archive.reduce.registration import register_and_stack
from archive.reduce.quality_measure import measure_frames

log = logging.getLogger(__name__)


def reduce_lights(
    engine: Engine, light_ids: Sequence[int], *, config: ReductionConfig | None = None,
    settings: Settings | None = None, executor: Executor | None = None, rules: RuleBook | None = None,
    register: bool = True, progress: Progress | None = None, products: ProductRun | None = None,
    measure: bool = False,
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
    measure : bool
        Measure the lights (on their calibrated frames) and judge them before registering
        and stacking (:func:`archive.reduce.quality_measure.measure_frames`); rejected lights are left
        out of the stacks either way (default False: ``archive night`` measures).

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
    products = products or ProductRun(engine, config.products_root(), settings)
    try:
        summary = calibrate_lights(engine, light_ids, config=config, products=products, executor=executor, rules=rules,
                                   progress=progress)
        if measure:
            measured = measure_frames(engine, light_ids, executor=executor, progress=progress)
            for what, why in measured.failed:
                summary.failures.append((f"measure {what}", why))
        if register:
            register_and_stack(engine, light_ids, config=config, products=products, executor=executor,
                               progress=progress, summary=summary)
    finally:
        if own_run:
            products.close()
    return summary
