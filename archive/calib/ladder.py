"""Dark ladders: a per-pixel dark-current model fitted over darks of several exposures.

A night's darks may be a *ladder*: a few frames at each of several exposures (two each at 5,
30, 60, 120, 180 and 240 s), too few at every exposure for a master dark (``min_frames`` of
the dark rules). When no ordinary master dark can be made for a group (one night, the dark
rules' ``exact`` keys and ``tolerance``, any exposure) and its darks span at least
``ladder_min_exposures`` exposures, :func:`build_dark_models` fits, pixel by pixel,

.. math:: D(t) = I + S t

over the darks with the master bias (and an overscan) subtracted: astro_reduce's
interpolation and ccdproc's exposure scaling made into one master. The frames of each
exposure are first combined by the combine engine (:func:`archive.calib.combine.combine_files`,
the dark rules' ``combine``); the line is then fitted by least squares over the exposures,
each weighted by its number of frames (closed form, accumulated one exposure at a time, so
memory holds a few images whatever the number of exposures):

.. math:: S = \\frac{W \\sum w_k t_k D_k - T \\sum w_k D_k}{W \\sum w_k t_k^2 - T^2},
          \\quad I = \\frac{\\sum w_k D_k - S T}{W}, \\quad W = \\sum w_k, \\; T = \\sum w_k t_k.

The product is a master of kind ``dark_model`` (:data:`archive.db.models.DARK_MODEL`): the
primary image is the slope S (ADU/s), the extension :data:`archive.keywords.INTERCEPT` the
intercept I (ADU), and :data:`archive.keywords.DARK_MODEL_TMIN` /
:data:`archive.keywords.DARK_MODEL_TMAX` the range of exposures fitted (s). It is written and
catalogued with its provenance like every master (:func:`archive.calib.record.record_master`).
Selection (:func:`archive.calib.select.explain_selection`) offers it, method ``model``, to a
light whose exposure lies within that range when no exact, longer or interpolated master dark
serves it; calibration subtracts :math:`I + S \\cdot` EXPTIME.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from archive import keywords as kw
from archive.calib.combine import MasterBuildError, combine_files
from archive.calib.masters import (
    BuildSummary,
    _geometry,
    _load_master,
    _master_header,
    _overscan,
    _plan_fingerprint,
    _usable_inputs,
    build_each,
)
from archive.calib.overscan import subtract_overscan_rows
from archive.calib.record import is_done, library_target, record_master
from archive.calib.plan import MasterPlan, describe, describe_parts, setup_groups
from archive.calib.rules import KindRules, MatchingRules, RuleBook
from archive.calib.select import explain_selection
from archive.calib.selection import exposure_key
from archive.db.frames import (
    FrameFilter,
    canonical_paths,
)
from archive.db.models import DARK_MODEL, Frame
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.ingest.products import ProductRun
from archive.progress import Progress

log = logging.getLogger(__name__)


def plan_dark_models(
    session: Session,
    *,
    filters: FrameFilter | None = None,
    rules: RuleBook | MatchingRules | None = None,
) -> list[MasterPlan]:
    """The dark ladders among the raw darks: groups no ordinary master dark can be made of.

    A group shares the night and the dark rules' ``exact`` values and spans at most each
    ``tolerance`` (as :func:`archive.calib.plan.plan_masters` groups darks, but over every
    exposure). It is a ladder when no exposure has ``min_frames`` frames (else an ordinary
    master dark is made and no model) and its known exposures are at least
    ``ladder_min_exposures`` distinct ones (within ``exposure_tolerance_s``). Instruments whose
    rules say ``ladder = false`` have none; darks of unknown exposure are left out.

    Parameters
    ----------
    session : Session
    filters : FrameFilter, optional
        Which raw darks (night, since/until, instrument, ...); the type is set to ``dark``.
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.

    Returns
    -------
    list of MasterPlan
        Kind ``dark_model``; frames ordered by DATE-OBS.
    """
    groups, _ = setup_groups(session, "dark", filters=filters, rules=rules,
                             keep=lambda frame, kr: kr.ladder and frame.exposure_time_s is not None)
    plans = []
    for values, part, matching, instrument in groups:
        kr = matching["dark"]
        steps = _steps(part, kr)
        if max(len(s) for s in steps) >= kr.min_frames or len(steps) < kr.ladder_min_exposures:
            continue
        plans.append(MasterPlan(DARK_MODEL, part, values, matching, instrument))
    plans.sort(key=lambda p: (p.frames[0].date_obs_s, p.frames[0].id))
    return plans


def _steps(frames: list[Frame], kr: KindRules) -> list[list[Frame]]:
    """The frames of each exposure (within ``exposure_tolerance_s``), shortest first."""
    by_key: dict[int, list[Frame]] = defaultdict(list)
    for frame in frames:
        by_key[exposure_key(frame.exposure_time_s, kr.exposure_tolerance_s)].append(
            frame
        )
    return [by_key[k] for k in sorted(by_key)]


def fit_dark_model(
    exposures: Sequence[float], images: Iterable[np.ndarray], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel least-squares line ``D = intercept + slope * t`` through dark images.

    Parameters
    ----------
    exposures : list of float
        Exposure time of each image, s; at least two distinct values.
    images : iterable of ndarray (ny, nx)
        Bias-subtracted darks (ADU), one per exposure (a generator keeps one in memory at a time).
    weights : list of float
        Weight of each image (the number of frames combined into it).

    Returns
    -------
    slope : ndarray (ny, nx), float64
        ADU/s.
    intercept : ndarray (ny, nx), float64
        ADU.

    Raises
    ------
    ValueError
        Fewer than two distinct exposures, or lengths differ.
    """
    if len(exposures) != len(weights):
        raise ValueError("one weight per exposure")
    sw = st = stt = 0.0
    sd = std = None
    n = 0
    for t, image, w in zip(exposures, images, weights):
        n += 1
        data = np.asarray(image, dtype=np.float64)
        sd = w * data if sd is None else sd + w * data
        std = w * t * data if std is None else std + w * t * data
        sw, st, stt = sw + w, st + w * t, stt + w * t * t
    det = sw * stt - st * st
    if n != len(exposures):
        raise ValueError("one image per exposure")
    if len(set(exposures)) < 2 or not det > 1e-12 * max(sw * stt, 1.0):
        raise ValueError("a dark model needs darks of at least two distinct exposures")
    slope = (sw * std - st * sd) / det
    intercept = (sd - slope * st) / sw
    return slope, intercept


def build_dark_models(
    engine: Engine,
    filters: FrameFilter | None,
    rules: RuleBook | MatchingRules,
    library: Path,
    memory_limit_mb: float | None,
    products: ProductRun,
    progress: Progress,
    summary: BuildSummary,
) -> None:
    """Build the dark model of every ladder (:func:`plan_dark_models`), like the other masters.

    Called by :func:`archive.calib.masters.build_masters` after the master darks (so that a
    flat built next may use a model). A model already built from the same inputs, master bias,
    parameters and rule version is a no-op (``unchanged``); one that fails is reported in
    ``summary.failed`` and the others are built.

    Parameters
    ----------
    engine : Engine
    filters : FrameFilter or None
    rules : RuleBook or MatchingRules
    library : Path
        The library folder; models go to ``<instrument>/dark_model/``.
    memory_limit_mb : float or None
        Overrides the rules' ``memory_limit_mb``.
    products : ProductRun
    progress : Progress
    summary : BuildSummary
    """
    with session_scope(engine) as session:
        plans = plan_dark_models(session, filters=filters, rules=rules)
    if plans:
        build_each(plans, DARK_MODEL, lambda plan: _build_model(engine, plan, library, products, summary),
                   memory_limit_mb, progress, summary, errors=(ArchiveError, OSError, ValueError))


def _build_model(
    engine: Engine,
    plan: MasterPlan,
    library: Path,
    products: ProductRun,
    summary: BuildSummary,
) -> None:
    kr = plan.rules["dark"]
    what = describe(plan)
    with session_scope(engine) as session:
        plan.frames = [session.merge(f, load=False) for f in plan.frames]
        paths = canonical_paths(session, [f.id for f in plan.frames])
        for frame, reason in _usable_inputs(plan, paths):
            summary.skipped_inputs.append(
                (DARK_MODEL, paths.get(frame.id) or f"frame {frame.id}", reason)
            )
            log.warning("dark model %s: input left out: %s", what, reason)
        steps = _steps(plan.frames, kr)
        if len(steps) < kr.ladder_min_exposures:
            raise MasterBuildError(
                f"{len(steps)} exposure(s) with usable darks; ladder_min_exposures is "
                f"{kr.ladder_min_exposures}"
            )
        rep = plan.frames[len(plan.frames) // 2]
        bias_sel = explain_selection(session, rep, "bias", rules=plan.rules)
        bias_sel = bias_sel if bias_sel.found else None
        calib_frames = (
            {
                bias_sel.master_id: (
                    "master_bias",
                    session.get(Frame, bias_sel.master_id).sha256,
                )
            }
            if bias_sel
            else {}
        )
        exposures = [
            float(np.mean([f.exposure_time_s for f in step])) for step in steps
        ]
        parameters: dict[str, Any] = {
            "combine": kr.combine,
            "group": {k: str(v) for k, v in plan.key.items()},
            "master_bias": bias_sel.master_id if bias_sel else None,
            "fit": "dark = intercept + slope * t, least squares weighted by frames per exposure",
            "exposures_s": exposures,
            "frames_per_exposure": [len(step) for step in steps],
        }
        if kr.combine == "sigma_clip":
            parameters["sigma"] = [
                plan.rules.sigma_low,
                plan.rules.sigma_high,
                plan.rules.maxiters,
            ]
        overscans = sorted(
            {
                g.overscan
                for g in (_geometry(f, plan.instrument) for f in plan.frames)
                if g.overscan
            }
        )
        if overscans:
            parameters["overscan"] = overscans
        fp = _plan_fingerprint(plan, calib_frames, parameters)
        if is_done(session, fp):
            summary.unchanged += 1
            return
        bias = _load_master(session, bias_sel.master_id) if bias_sel else None
        files = [paths[f.id] for f in plan.frames]
        slope, intercept = _fit(plan, steps, files, bias, kr)
        header = _master_header(plan, parameters, fp, [Path(p).name for p in files])
    header[kw.DARK_MODEL_TMIN] = (
        min(exposures),
        "[s] shortest exposure of the dark model",
    )
    header[kw.DARK_MODEL_TMAX] = (
        max(exposures),
        "[s] longest exposure of the dark model",
    )
    header[kw.HISTORY] = (
        f"dark model: primary = slope (ADU/s), extension {kw.INTERCEPT} = intercept (ADU)"
    )
    header[kw.HISTORY] = (
        "dark(t) = intercept + slope * t, fitted over exposures "
        + ", ".join(f"{t:g}" for t in exposures)
    )
    setup = "_".join(describe_parts(plan)[1:])
    target = library_target(library, plan.instrument, DARK_MODEL, setup, fp)
    inputs = [(f.id, "raw") for f in plan.frames] + [
        (mid, role) for mid, (role, _) in calib_frames.items()
    ]
    record_master(
        engine,
        DARK_MODEL,
        fp,
        parameters,
        inputs,
        target,
        slope,
        header,
        products,
        summary,
        what=describe(plan),
        rule_version=plan.rules.version,
        n_combined=len(plan.frames),
        combine_method=plan.rules["dark"].combine,
        selections=[bias_sel] if bias_sel else [],
        bias_subtracted=bias is not None,
        extensions=[(kw.INTERCEPT, intercept)],
    )


def _fit(
    plan: MasterPlan,
    steps: list[list[Frame]],
    files: list[str],
    bias: np.ndarray | None,
    kr: KindRules,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine each exposure's darks (overscan and bias subtracted) and fit the line."""
    rules = plan.rules
    hdus = [f.hdu_index for f in plan.frames]
    geometries, levels = _overscan(plan, files, hdus)
    index = {f.id: i for i, f in enumerate(plan.frames)}

    def prepare(i: int, block: np.ndarray, start: int, stop: int) -> np.ndarray:
        subtract_overscan_rows(block, geometries[i], levels[i])
        if bias is not None:
            block -= bias[start:stop]
        return block

    def combined(members: list[int]) -> np.ndarray:
        return combine_files(
            [files[i] for i in members],
            method=kr.combine,
            hdu_indexes=[hdus[i] for i in members],
            prepare=lambda j, block, a, b: prepare(members[j], block, a, b),
            memory_limit_mb=rules.memory_limit_mb,
            sigma_low=rules.sigma_low,
            sigma_high=rules.sigma_high,
            maxiters=rules.maxiters,
        )

    exposures = [float(np.mean([f.exposure_time_s for f in step])) for step in steps]
    weights = [float(len(step)) for step in steps]
    images = (
        combined([index[f.id] for f in step]) for step in steps
    )  # one exposure at a time
    return fit_dark_model(exposures, images, weights)
