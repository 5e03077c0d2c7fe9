"""Building masters: compute each planned group's master and record it with its provenance.

``build_masters`` groups the ingested raw calibrations by the matching rules (the same rules
that select masters, :mod:`archive.calib.rules`), builds each group's master in the order bias,
dark, flat, writes it to the library folder (a temporary name, then a rename), ingests it and
links it to its reduction (step, fingerprint, parameters, software versions, inputs). A group
whose fingerprint (step, inputs and roles, parameters, rule version) already has a finished
reduction is skipped: rebuilding with the same inputs and rules is a no-op; an interrupted
build is redone by the next run under the same reduction row (the bookkeeping is
:mod:`archive.db.provenance`'s, the file writing :func:`archive.fitsio.write_atomic`).

Pixels follow ccdproc's conventions (``ccdproc.combine``, ``subtract_bias``,
``subtract_dark`` with exposure scaling, flats normalized to a median of 1) but are combined
in blocks of rows read straight from the files, so memory stays within the configured limit
however many frames are combined (:mod:`archive.calib.combine`; the median of 20 raw 16-bit
frames of 3072 x 2048 takes about 0.4 s on two cores).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from archive.calib.combine import MasterBuildError, RowReader, image_median, combine_files
from archive.calib.rules import KindRules, MatchingRules, RuleBook, default_rulebook
from archive.calib.select import explain_selection, interpolation_weights
from archive.calib.selection import Selection
from archive.config import Settings, load_settings
from archive.db.models import BADPIX, CALIBRATION_KINDS, DARK_MODEL, Frame, Master
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive import keywords as kw
from archive.files import remove_partials
from archive.fitsio import read_dark_model
from archive.db.frames import FrameFilter, canonical_paths
from archive.db.provenance import fingerprint
from archive.ingest.cards import header_from_text
from archive.ingest.library import sync_library
from archive.ingest.products import ProductRun
from archive.ingest.timing import from_epoch_seconds
from archive.calib.library import default_library
from archive.calib.overscan import (
    Geometry, detector_geometry, overscan_levels, parse_section, strip_axis, subtract_overscan_rows,
)
from archive.calib.plan import MasterPlan, describe, describe_parts, plan_masters
from archive.calib.record import is_done, library_target, record_master
from archive.progress import NoProgress, Progress

log = logging.getLogger(__name__)

@dataclass
class BuildSummary:
    """What a build did.

    Attributes
    ----------
    built : list of (kind, frame id, path)
    unchanged : int
        Groups whose fingerprint already had a finished build (no-ops).
    too_small : list of (kind, description, count)
        Groups below ``min_frames``.
    failed : list of (kind, description, reason)
    skipped_no_date : int
        Raw calibrations without DATE-OBS (no night, cannot be grouped).
    skipped_inputs : list of (kind, path, reason)
        Raw frames left out of their group's master because they cannot be read (missing,
        truncated, not a 2-D image, a shape other than the group's) or calibrated (an unknown
        exposure time the dark cannot be scaled to, a flat whose calibrated median is not
        positive); the master is built from the others when at least ``min_frames`` remain.
    busy : int
        Groups another live process, or a process on another host, was building (left to it;
        :func:`archive.db.provenance.start_reduction`).
    """

    built: list[tuple[str, int, str]] = field(default_factory=list)
    unchanged: int = 0
    too_small: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped_no_date: int = 0
    skipped_inputs: list[tuple[str, str, str]] = field(default_factory=list)
    busy: int = 0


# -- fingerprints and provenance -----------------------------------------------------------------


def _usable_inputs(plan: MasterPlan, paths: dict[int, str]) -> list[tuple[Frame, str]]:
    """Check the raw inputs' files (present, readable, 2-D, not truncated, one shape) and drop
    the bad ones from ``plan.frames``; returns the dropped (frame, reason) pairs.

    The shape kept is the most common one (ties: the first frame's)."""
    shapes: dict[int, tuple[int, int]] = {}
    bad: list[tuple[Frame, str]] = []
    for frame in plan.frames:
        path = paths.get(frame.id)
        if path is None:
            bad.append((frame, f"frame {frame.id} has no current file on disk"))
            continue
        try:
            reader = RowReader(path, frame.hdu_index)
        except MasterBuildError as exc:
            bad.append((frame, str(exc)))
            continue
        shapes[frame.id] = reader.shape
        reader.close()
    if shapes:
        counts = Counter(shapes.values())
        first = next(shapes[f.id] for f in plan.frames if f.id in shapes)
        keep = max(counts, key=lambda shape: (counts[shape], shape == first))
        for frame in plan.frames:
            if frame.id in shapes and shapes[frame.id] != keep:
                bad.append((frame, f"{paths[frame.id]}: shape {shapes[frame.id]} differs from the group's {keep}"))
    dropped = {f.id for f, _ in bad}
    plan.frames = [f for f in plan.frames if f.id not in dropped]
    return bad


@dataclass
class _Calibrators:
    bias: Selection | None = None
    dark: Selection | None = None


def _select_calibrators(session: Session, plan: MasterPlan) -> _Calibrators:
    """The master bias (darks, flats) and master dark (flats) used to build ``plan``'s master."""
    rep = plan.frames[len(plan.frames) // 2]
    out = _Calibrators()
    if plan.kind in ("dark", "flat"):
        sel = explain_selection(session, rep, "bias", rules=plan.rules)
        out.bias = sel if sel.found else None
    if plan.kind == "flat":
        sel = explain_selection(session, rep, "dark", rules=plan.rules)
        out.dark = sel if sel.found else None
    return out


def _master_header(plan: MasterPlan, parameters: dict[str, Any], fp: str, names: Sequence[str]) -> fits.Header:
    first = header_from_text(plan.frames[0].header)
    first.strip()
    mid_s = sum(f.date_obs_s for f in plan.frames) / len(plan.frames)
    mid = from_epoch_seconds(mid_s)
    exposures = [f.exposure_time_s for f in plan.frames]
    first[kw.IMAGE_TYPE] = (kw.IMAGE_TYPE_VALUES[f"master_{plan.kind}"], "archive master calibration")
    first[kw.DATE_OBS] = (mid.isoformat(timespec="milliseconds"), "mean DATE-OBS of the inputs (UTC)")
    if exposures and None not in exposures:  # an unknown exposure is never written as a guess
        first[kw.EXPOSURE_TIME] = (float(np.mean(exposures)), "[s] mean exposure of the inputs")
    first[kw.NCOMBINE] = (len(plan.frames), "number of frames combined")
    first[kw.COMBINE] = (parameters["combine"], "combine method")
    first[kw.RULE_VERSION] = (plan.rules.version, "archive matching rules")
    first[kw.REDUCTION_STEP] = (f"master_{plan.kind}", "archive reduction step")
    first[kw.FINGERPRINT] = fp
    if plan.kind in ("dark", DARK_MODEL):
        first[kw.BIAS_SUBTRACTED] = (bool(parameters.get("master_bias")), "master bias subtracted")
    if plan.kind == "flat":
        first[kw.NORMALIZED] = (True, "normalized to a median of 1")
    for frame, name in zip(plan.frames, names):
        first[kw.HISTORY] = f"input {name} sha256:{frame.sha256[:16]}"
    for role in ("master_bias", "master_dark"):
        if parameters.get(role):
            first[kw.HISTORY] = f"{role} frame {parameters[role]}"
    return first


def _compute(
    session: Session, plan: MasterPlan, paths: dict[int, str], cal: _Calibrators
) -> tuple[np.ndarray | None, list[tuple[Frame, str]]]:
    """Combine the master's pixels. Returns the image (None when fewer than ``min_frames``
    inputs can be calibrated) and the inputs left out with the reason (an exposure time the
    dark cannot be scaled to, a flat whose calibrated median is not positive)."""
    rules = plan.rules
    kr: KindRules = rules[plan.kind]
    frames = plan.frames
    files = [paths[f.id] for f in frames]
    hdus = [f.hdu_index for f in frames]
    dropped: dict[int, str] = {}
    bias = None
    if cal.bias is not None:
        bias = _load_master(session, cal.bias.master_id)
    # per input: (dark image, factor) terms; a bias-subtracted dark scales with t / t_dark,
    # an interpolated one is re-weighted at each input's exposure (dark = A*t + B)
    per_frame: list[list[tuple[np.ndarray, float]]] = [[] for _ in frames]
    if cal.dark is not None:
        if cal.dark.method == "model":  # dark = intercept + slope * t (archive.calib.ladder)
            slope, intercept = read_dark_model(canonical_paths(session, [cal.dark.master_id])[cal.dark.master_id])
            slope, intercept = slope.astype(np.float32), intercept.astype(np.float32)
        else:
            darks = {mid: (_load_master(session, mid), session.get(Master, mid), session.get(Frame, mid))
                     for mid, _ in cal.dark.weights}
        for i, frame in enumerate(frames):
            t = frame.exposure_time_s
            if cal.dark.method == "model":
                if t is None:
                    dropped[i] = f"{files[i]}: no exposure time, cannot evaluate the dark model"
                else:
                    per_frame[i] = [(intercept, 1.0), (slope, t)]
                continue
            if cal.dark.method == "interpolated":
                if t is None:
                    dropped[i] = f"{files[i]}: no exposure time, cannot interpolate the master dark"
                    continue
                mids = [mid for mid, _ in cal.dark.weights]
                weights = interpolation_weights([darks[m][2].exposure_time_s for m in mids], t)
                per_frame[i] = [(darks[m][0], w) for m, w in zip(mids, weights)]
                continue
            try:
                per_frame[i] = [(darks[mid][0], _dark_factor(frame, darks[mid][1], darks[mid][2], weight))
                                for mid, weight in cal.dark.weights]
            except MasterBuildError as exc:
                dropped[i] = f"{files[i]}: {exc}"
    has_dark = any(per_frame)
    geometries, levels = _overscan(plan, files, hdus)

    def prepare(i: int, block: np.ndarray, start: int, stop: int) -> np.ndarray:
        subtract_overscan_rows(block, geometries[i], levels[i])
        if bias is not None:
            block -= bias[start:stop]
        for data, factor in per_frame[i]:
            block -= np.float32(factor) * data[start:stop]
        return block

    medians: dict[int, float] = {}
    if plan.kind == "flat":
        for i, (path, hdu) in enumerate(zip(files, hdus)):
            if i in dropped:
                continue
            reader = RowReader(path, hdu)
            try:
                med = image_median(reader, prepare, i)
            finally:
                reader.close()
            if not np.isfinite(med) or med <= 0:
                dropped[i] = f"{path}: calibrated flat has median {med}; cannot normalize"
            else:
                medians[i] = med
    keep = [i for i in range(len(frames)) if i not in dropped]
    left_out = [(frames[i], reason) for i, reason in sorted(dropped.items())]
    if not keep or len(keep) < kr.min_frames:
        return None, left_out
    data = combine_files(
        [files[i] for i in keep], method=kr.combine, hdu_indexes=[hdus[i] for i in keep],
        prepare=(lambda j, block, a, b: prepare(keep[j], block, a, b))
        if (bias is not None or has_dark or any(g.overscan for g in geometries)) else None,
        scales=[1.0 / medians[i] for i in keep] if plan.kind == "flat" else None,
        memory_limit_mb=rules.memory_limit_mb, sigma_low=rules.sigma_low,
        sigma_high=rules.sigma_high, maxiters=rules.maxiters,
    )
    if plan.kind == "flat":
        med = float(np.nanmedian(data))
        if not np.isfinite(med) or med <= 0:
            raise MasterBuildError(f"combined flat has median {med}; cannot normalize")
        data /= np.float32(med)
    return data, left_out


def _geometry(frame: Frame, instrument: str | None) -> Geometry:
    return detector_geometry(header_from_text(frame.header), (frame.naxis2 or 0, frame.naxis1 or 0), instrument)


def _overscan(plan: MasterPlan, files: Sequence[str], hdus: Sequence[int]) -> tuple[list[Geometry], list]:
    """Each input's detector geometry (:func:`archive.calib.overscan.detector_geometry`) and,
    for a strip of rows, its per-column overscan levels (read once; a strip of columns is
    measured in each block of rows)."""
    geometries, levels = [], []
    for frame, path, hdu in zip(plan.frames, files, hdus):
        geometry = _geometry(frame, plan.instrument)
        level = None
        if geometry.overscan and strip_axis(geometry.overscan) == 0:
            rows = parse_section(geometry.overscan)[0]
            reader = RowReader(path, hdu)
            try:
                level = overscan_levels(reader.rows(rows.start, rows.stop))
            finally:
                reader.close()
        geometries.append(geometry)
        levels.append(level)
    return geometries, levels


def _dark_factor(frame: Frame, master: Master, dframe: Frame, weight: float) -> float:
    """The factor of a master dark subtracted from a raw frame: t / t_dark for a
    bias-subtracted dark (it scales with exposure), else its selection weight (1: an exact
    dark, bias included). An unknown exposure is never taken as 0 or as the group's."""
    if not master.bias_subtracted:
        return weight
    t, td = frame.exposure_time_s, dframe.exposure_time_s
    if t is None and td is None:
        return weight  # matched as "unknown equals unknown": an exact dark
    if t is None or td is None or td <= 0:
        raise MasterBuildError(
            f"frame {frame.id} ({t} s) and master dark {dframe.id} ({td} s): exposure time unknown or "
            "zero, cannot scale the dark"
        )
    return t / td


def _load_master(session: Session, frame_id: int) -> np.ndarray:
    frame = session.get(Frame, frame_id)
    path = canonical_paths(session, [frame_id]).get(frame_id)
    if path is None:
        raise MasterBuildError(f"master {frame_id} has no current file on disk")
    reader = RowReader(path, frame.hdu_index)
    try:
        return reader.full()
    finally:
        reader.close()


def build_masters(
    engine: Engine,
    *,
    filters: FrameFilter | None = None,
    kinds: Sequence[str] = CALIBRATION_KINDS,
    rules: RuleBook | MatchingRules | None = None,
    library: Path | None = None,
    memory_limit_mb: float | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
    products: ProductRun | None = None,
) -> BuildSummary:
    """Build the masters of the raw calibrations matching ``filters``, bias then dark then flat,
    then the bad-pixel masks of their nights (:mod:`archive.calib.badpix_build`).

    Each group (:func:`plan_masters`) becomes one master: median or sigma-clipped mean
    (``combine`` of the rules), darks with the master bias subtracted (so that they scale with
    exposure time; ``BIASSUB`` says so), flats with bias and, when one is found, scaled dark
    subtracted, each input divided by its median and the result normalized to a median of 1.
    The file goes to ``library/<instrument>/<kind>/`` under a temporary name and is renamed,
    catalogued (:func:`archive.ingest.products.record_product`) and linked to its reduction: inputs with
    roles (raw, master_bias, master_dark), parameters, software versions, host, times; the
    selections of the masters used are stored too.

    Takes the engine, not a session, because each master is its own unit of work: the
    reduction row is committed as 'running' first (:func:`archive.db.provenance.start_reduction`),
    so an interrupted build is finished (not duplicated) by the next run on the same host, and
    a concurrent run building the same group, or a build claimed on another host, is left to
    that run (``busy``). A master that fails (an input that cannot be calibrated, a write
    error) is reported in ``failed`` and the others are built; a raw frame that cannot be
    read or calibrated is left out of its master and reported in ``skipped_inputs``.

    Parameters
    ----------
    engine : Engine
    filters : FrameFilter, optional
        Which raw calibrations (night, since/until, instrument, ...); the type is set per kind.
    kinds : sequence of {'bias', 'dark', 'flat', 'badpix'}
        Built in the order bias, dark, flat, badpix whatever the order given (default the
        three calibrations; ``archive masters build`` and ``archive night`` ask for
        :data:`archive.db.models.LIBRARY_KINDS`, the mask included). ``badpix``: the
        masks of the master darks and flats (and of the lights no dark serves) that
        ``filters`` selects (:func:`archive.calib.badpix_build.build_badpix`).
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.
    library : Path, optional
        Default :func:`default_library`.
    memory_limit_mb : float, optional
        Overrides the rules' ``memory_limit_mb`` (MB of 2**20 bytes).
    settings : Settings, optional
        The library folder and the configured sites.
    progress : Progress, optional
    products : ProductRun, optional
        The ingest run the masters join (default one of their own, closed at the end).

    Returns
    -------
    BuildSummary

    Raises
    ------
    ConfigError
        Invalid rules or configuration.
    """
    settings = settings or load_settings()
    library = (Path(library) if library else default_library(settings)).expanduser().absolute()
    rules = rules if rules is not None else default_rulebook(settings)
    progress = progress or NoProgress()
    summary = BuildSummary()
    removed = remove_partials(library)  # temporary files of builds that were killed
    if removed:
        log.info("removed %d temporary file(s) of interrupted builds under %s", removed, library)
    with session_scope(engine, write=True) as session:  # masters made elsewhere, ingested by an earlier version
        sync_library(session)
    own_run = products is None
    products = products or ProductRun(engine, library, settings)
    try:
        _build_kinds(engine, kinds, filters, rules, library, memory_limit_mb, products, progress, summary)
    finally:
        if own_run:
            products.close()
    return summary


def build_each(plans: Sequence[MasterPlan], kind: str, build: Callable[[MasterPlan], None],
               memory_limit_mb: float | None, progress: Progress, summary: BuildSummary,
               errors: tuple[type[BaseException], ...] = (ArchiveError, OSError)) -> None:
    """``build(plan)`` for each plan (masters of one kind, or dark models): one that fails with
    one of ``errors`` is reported in ``summary.failed`` and logged, and the others are built.

    ``memory_limit_mb`` (when given) overrides each plan's rules.
    """
    progress.start(len(plans), f"master {kind}")
    for plan in plans:
        if memory_limit_mb:
            plan.rules = replace(plan.rules, memory_limit_mb=memory_limit_mb)
        what = describe(plan)  # before: a failed build leaves the plan's frames detached
        try:
            build(plan)
        except errors as exc:  # this master fails; the others are built
            summary.failed.append((kind, what, str(exc)))
            log.warning("master %s %s failed: %s", kind, what, exc)
        progress.advance()
    progress.finish()


def _build_kinds(engine, kinds, filters, rules, library, memory_limit_mb, products, progress, summary) -> None:
    for kind in [k for k in CALIBRATION_KINDS if k in kinds]:
        with session_scope(engine) as session:
            plans, too_small, no_date = plan_masters(session, kind, filters=filters, rules=rules)
        summary.too_small += [(kind, d, n) for d, n in too_small]
        summary.skipped_no_date += no_date
        build_each(plans, kind, lambda plan: _build_one(engine, plan, library, products, summary), memory_limit_mb,
                   progress, summary)
        if kind == "dark":  # a ladder's darks, too few at every exposure: a dark model (before the flats)
            from archive.calib.ladder import build_dark_models  # ladder builds on this module's helpers

            build_dark_models(engine, filters, rules, library, memory_limit_mb, products, progress, summary)
    if BADPIX in kinds:
        from archive.calib.badpix_build import build_badpix

        build_badpix(engine, filters=filters, rules=rules, library=library, products=products, summary=summary,
                     progress=progress)


def _plan_fingerprint(plan: MasterPlan, calib_frames: dict[int, tuple[str, str]], parameters: dict[str, Any]) -> str:
    """The fingerprint of building ``plan``'s master: its raw frames, the masters used (frame
    id -> (role, sha256)), the parameters and the rule version."""
    inputs = [(f.sha256, "raw") for f in plan.frames] + [(sha, role) for role, sha in calib_frames.values()]
    return fingerprint(f"master_{plan.kind}", inputs, parameters, plan.rules.version)


def _build_one(engine: Engine, plan: MasterPlan, library: Path, products: ProductRun, summary: BuildSummary) -> None:
    kr = plan.rules[plan.kind]
    what = describe(plan)
    with session_scope(engine) as session:
        plan.frames = [session.merge(f, load=False) for f in plan.frames]
        paths = canonical_paths(session, [f.id for f in plan.frames])
        checked = False
        while True:
            cal = _select_calibrators(session, plan)
            calib_frames = {}
            for role, sel in (("master_bias", cal.bias), ("master_dark", cal.dark)):
                for mid, _w in (sel.weights if sel else []):
                    calib_frames[mid] = (role, session.get(Frame, mid).sha256)
            parameters: dict[str, Any] = {
                "combine": kr.combine, "group": {k: str(v) for k, v in plan.key.items()},
                "master_bias": cal.bias.master_id if cal.bias else None,
                "master_dark": [[m, w] for m, w in cal.dark.weights] if cal.dark else None,
                "dark_method": cal.dark.method if cal.dark else None,
            }
            if kr.combine == "sigma_clip":
                parameters["sigma"] = [plan.rules.sigma_low, plan.rules.sigma_high, plan.rules.maxiters]
            overscans = sorted({g.overscan for g in map(lambda f: _geometry(f, plan.instrument), plan.frames)
                                if g.overscan})
            if overscans:  # only then: masters of detectors without an overscan keep their fingerprints
                parameters["overscan"] = overscans
            fp = _plan_fingerprint(plan, calib_frames, parameters)
            if is_done(session, fp):
                summary.unchanged += 1
                return
            if checked:
                break
            # not built yet: check the files, leave the bad ones out (reported), and look again
            # for a master built earlier from the good ones
            checked = True
            bad = _usable_inputs(plan, paths)
            for frame, reason in bad:
                summary.skipped_inputs.append((plan.kind, paths.get(frame.id) or f"frame {frame.id}", reason))
                log.warning("master %s %s: input left out: %s", plan.kind, what, reason)
            if not plan.frames or len(plan.frames) < kr.min_frames:
                raise MasterBuildError(f"{len(plan.frames)} usable input(s) after leaving out {len(bad)}; "
                                       f"min_frames is {kr.min_frames}")
            if not bad:
                break
        data, left_out = _compute(session, plan, paths, cal)
        for frame, reason in left_out:  # inputs that cannot be calibrated: reported
            summary.skipped_inputs.append((plan.kind, paths[frame.id], reason))
            log.warning("master %s %s: input left out: %s", plan.kind, what, reason)
        if data is None:
            raise MasterBuildError(f"{len(plan.frames) - len(left_out)} input(s) can be calibrated after leaving "
                                   f"out {len(left_out)}; min_frames is {kr.min_frames}")
        if left_out:  # the master is made of the others, a fingerprint of its own
            dropped = {f.id for f, _ in left_out}
            plan.frames = [f for f in plan.frames if f.id not in dropped]
            fp = _plan_fingerprint(plan, calib_frames, parameters)
            if is_done(session, fp):
                summary.unchanged += 1
                return
        header = _master_header(plan, parameters, fp, [Path(paths[f.id]).name for f in plan.frames])
    setup = "_".join(describe_parts(plan)[1:])  # night, binning, exposure, filter, temperature
    target = library_target(library, plan.instrument, plan.kind, setup, fp)
    inputs = [(f.id, "raw") for f in plan.frames] + [(mid, role) for mid, (role, _) in calib_frames.items()]
    record_master(engine, plan.kind, fp, parameters, inputs, target, data, header, products, summary,
                  what=what, rule_version=plan.rules.version, n_combined=len(plan.frames),
                  combine_method=kr.combine, selections=[sel for sel in (cal.bias, cal.dark) if sel is not None],
                  bias_subtracted=plan.kind == "dark" and cal.bias is not None)


