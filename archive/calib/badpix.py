"""Bad-pixel masks: hot pixels from master darks, cold pixels from master flats, or hot pixels
from a sequence's own lights when no dark serves it (issue 10).

The rules (values in ``[bad_pixels]`` of ``configs/detector.toml``, per instrument overridable):

* **hot** (master darks): a pixel whose value exceeds ``median + hot_sigma * 1.4826 * MAD`` of
  its image, the median absolute deviation being the robust standard deviation of a Gaussian.
  The rule does not depend on the dark's scale (exposure time, bias subtracted or not); a
  pixel hot in any dark of the set is masked;
* **cold** (master flats): ``ccdproc.ccdmask`` (Valdes' IRAF ``ccdmask``: deviation from the
  median-filtered flat beyond ``lsigma`` below or ``hsigma`` above the local robust sigma; dead
  columns are found whole);
* **from the lights** (no master dark serves the sequence): in each light a pixel more than
  ``lights_sigma`` robust sigmas above the ``lights_filter_px`` median filter of its image is an
  outlier; a pixel that is one in at least ``lights_fraction`` of the lights is masked (stars
  move across the detector between frames, hot pixels stay).

A Bayer (one-shot colour) frame is judged per channel of its mosaic (every second pixel of
every second row): each channel has its own level and noise. The mask is a uint8 image in the
detector's raw geometry (1 hot, 2 cold, 3 both; 0 good), a master of kind ``badpix`` built
per instrument set-up (the ``exact`` columns of the rules' ``[badpix]``) and night, with its
provenance (inputs with roles, parameters, rule version) through the one product protocol
(:func:`archive.ingest.products.record_product`), as :mod:`archive.calib.masters` records
masters. Calibration sets masked pixels to NaN (:mod:`archive.reduce.calibrate`), so they
never drive star detection or registration and are left out of every combine.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from archive import keywords as kw
from archive.calib.library import LIBRARY_LAYOUT
from archive.calib.overscan import detector_geometry, trim_slices
from archive.calib.rules import MatchingRules, RuleBook
from archive.calib.select import explain_selection
from archive.calib.selection import match_value, rules_for
from archive.config import for_instrument, merge, read_toml
from archive.db.base import utcnow
from archive.db.frames import (
    FrameFilter,
    canonical_paths,
    frame_query,
    instrument_names,
)
from archive.db.models import BADPIX, Frame, Master, Reduction
from archive.db.provenance import fingerprint, start_reduction
from archive.db.prune import pruned_condition
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.files import render_path, safe_component
from archive.fitsio import read_pixels, write_atomic
from archive.ingest.headers import header_from_text
from archive.ingest.products import ProductRun, fail_product, record_product
from archive.ingest.timing import from_epoch_seconds
from archive.progress import NoProgress, Progress
from archive.resources import resource_dir

log = logging.getLogger(__name__)

#: Mask values: a pixel found hot (darks or lights), cold (flats); both: 3.
HOT, COLD = 1, 2
#: 1.4826 * MAD is the standard deviation of a Gaussian.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class BadPixelSettings:
    """``[bad_pixels]`` of ``configs/detector.toml`` for one instrument (see the module docstring).

    Attributes
    ----------
    hot_sigma : float
        Hot pixel threshold in robust sigmas above the master dark's median.
    ccdmask : dict
        Keyword arguments of ``ccdproc.ccdmask`` for master flats.
    lights_sigma : float
        Outlier threshold in a light, robust sigmas above its median filter.
    lights_filter_px : int
        Size of that median filter (pixels of the image or of a Bayer channel).
    lights_fraction : float
        Fraction of the lights a pixel must be an outlier in to be masked.
    lights_max_frames : int
        Lights read at most (evenly spread over the sequence).
    """

    hot_sigma: float = 6.0
    ccdmask: dict[str, Any] = field(default_factory=dict)
    lights_sigma: float = 6.0
    lights_filter_px: int = 5
    lights_fraction: float = 0.7
    lights_max_frames: int = 30

    @property
    def parameters(self) -> dict[str, Any]:
        """The settings as reduction parameters (in the mask's fingerprint)."""
        return asdict(self)


@functools.cache
def _table(config: str | None) -> dict[str, Any]:
    return read_toml(
        Path(config) if config else resource_dir("configs") / "detector.toml"
    ).get("bad_pixels", {})


def bad_pixel_settings(
    instrument: str | None = None, *, config: str | None = None
) -> BadPixelSettings:
    """The bad-pixel settings of ``instrument`` (its override merged over ``[bad_pixels]``).

    Parameters
    ----------
    instrument : str, optional
        Normalized instrument name (or an :class:`archive.config.InstrumentName`).
    config : str, optional
        Another detector file (tests).

    Returns
    -------
    BadPixelSettings

    Raises
    ------
    ArchiveError
        An unknown setting or a value of the wrong type.
    """
    table = dict(_table(config))
    overrides = table.pop("instruments", {})
    raw = merge(table, for_instrument(overrides, instrument, {}))
    try:
        return BadPixelSettings(
            hot_sigma=float(raw.get("hot_sigma", 6.0)),
            ccdmask=dict(raw.get("ccdmask", {})),
            lights_sigma=float(raw.get("lights_sigma", 6.0)),
            lights_filter_px=int(raw.get("lights_filter_px", 5)),
            lights_fraction=float(raw.get("lights_fraction", 0.7)),
            lights_max_frames=int(raw.get("lights_max_frames", 30)),
        )
    except (TypeError, ValueError) as exc:
        from archive.errors import ConfigError

        raise ConfigError(f"configs/detector.toml [bad_pixels]: {exc}") from exc


# -- pixels ----------------------------------------------------------------------------------------


def channels(
    shape: tuple[int, ...], bayer_pattern: str | None
) -> list[tuple[slice, slice]]:
    """The parts of an image judged apart: the whole image, or a Bayer mosaic's four channels.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx).
    bayer_pattern : str or None
        The mosaic's pattern (``frames.bayer_pattern``); None for a monochrome sensor.

    Returns
    -------
    list of (slice, slice)
        Row and column slices.
    """
    if not bayer_pattern:
        return [(slice(None), slice(None))]
    return [(slice(r, None, 2), slice(c, None, 2)) for r in (0, 1) for c in (0, 1)]


def robust_sigma(values: np.ndarray) -> tuple[float, float]:
    """The median and 1.4826 * MAD of the finite ``values``."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return float("nan"), float("nan")
    median = float(np.median(finite))
    return median, MAD_TO_SIGMA * float(np.median(np.abs(finite - median)))


def hot_pixels(
    dark: np.ndarray, hot_sigma: float, bayer_pattern: str | None = None
) -> np.ndarray:
    """Pixels of a master dark above ``median + hot_sigma * 1.4826 * MAD`` (per Bayer channel).

    Parameters
    ----------
    dark : ndarray, shape (ny, nx)
    hot_sigma : float
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    dark = np.asarray(dark, dtype=np.float64)
    out = np.zeros(dark.shape, dtype=bool)
    for rows, cols in channels(dark.shape, bayer_pattern):
        part = dark[rows, cols]
        median, sigma = robust_sigma(part)
        if np.isfinite(median):
            out[rows, cols] = part > median + hot_sigma * sigma
    return out


def cold_pixels(
    flat: np.ndarray,
    ccdmask: dict[str, Any] | None = None,
    bayer_pattern: str | None = None,
) -> np.ndarray:
    """Bad pixels of a master flat by ``ccdproc.ccdmask`` (per Bayer channel).

    Parameters
    ----------
    flat : ndarray, shape (ny, nx)
    ccdmask : dict, optional
        Keyword arguments of ``ccdproc.ccdmask``.
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    import ccdproc

    flat = np.asarray(flat, dtype=np.float64)
    out = np.zeros(flat.shape, dtype=bool)
    for rows, cols in channels(flat.shape, bayer_pattern):
        part = flat[rows, cols]
        out[rows, cols] = np.asarray(
            ccdproc.ccdmask(
                np.nan_to_num(part, nan=np.nanmedian(part)), **(ccdmask or {})
            )
        )
    return out


def light_outliers(
    light: np.ndarray, sigma: float, filter_px: int, bayer_pattern: str | None = None
) -> np.ndarray:
    """Pixels of one light more than ``sigma`` robust sigmas above its median filter.

    Parameters
    ----------
    light : ndarray, shape (ny, nx)
    sigma : float
    filter_px : int
        Size of the square median filter (pixels of a channel for a Bayer mosaic).
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    from scipy.ndimage import median_filter

    light = np.asarray(light, dtype=np.float32)
    out = np.zeros(light.shape, dtype=bool)
    for rows, cols in channels(light.shape, bayer_pattern):
        part = light[rows, cols]
        residual = part - median_filter(part, size=filter_px, mode="reflect")
        median, spread = robust_sigma(
            residual[::2, ::2]
        )  # a quarter of the pixels: the same statistics
        if np.isfinite(median) and spread > 0:
            out[rows, cols] = residual > median + sigma * spread
    return out


def mask_from_lights(
    lights: Iterable[np.ndarray],
    settings: BadPixelSettings,
    bayer_pattern: str | None = None,
) -> np.ndarray:
    """Pixels that are outliers (:func:`light_outliers`) in at least ``lights_fraction`` of ``lights``.

    Parameters
    ----------
    lights : iterable of ndarray, shape (ny, nx)
        Read one at a time (a generator keeps one light in memory).
    settings : BadPixelSettings
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        No lights.
    """
    counts, n = None, 0
    for light in lights:
        hits = light_outliers(
            light, settings.lights_sigma, settings.lights_filter_px, bayer_pattern
        )
        counts = hits.astype(np.uint16) if counts is None else counts + hits
        n += 1
    if counts is None:
        raise ValueError("no lights to find bad pixels in")
    return counts >= settings.lights_fraction * n


# -- planning and building --------------------------------------------------------------------------


@dataclass
class BadpixPlan:
    """One mask to build: a set-up's night, and the frames it is made from.

    Attributes
    ----------
    instrument : str or None
    key : dict
        The ``exact`` columns of ``[badpix]`` and the night.
    darks, flats : list of Frame
        Master darks (hot) and master flats (cold).
    lights : list of Frame
        Raw lights (hot, when no master dark serves them).
    """

    instrument: Any
    key: dict[str, Any]
    darks: list[Frame] = field(default_factory=list)
    flats: list[Frame] = field(default_factory=list)
    lights: list[Frame] = field(default_factory=list)

    @property
    def frames(self) -> list[Frame]:
        return [*self.darks, *self.flats, *self.lights]

    @property
    def source(self) -> str:
        """'darks', 'lights' or 'flats': where the hot pixels come from."""
        return "darks" if self.darks else "lights" if self.lights else "flats"

    def describe(self) -> str:
        return " ".join(str(v) for v in self.key.values() if v is not None)


def _group_key(frame: Frame, exact: Sequence[str]) -> tuple:
    return (*(match_value(frame, c) for c in exact), frame.night)


def plan_badpix(
    session: Session,
    *,
    filters: FrameFilter | None = None,
    rules: RuleBook | MatchingRules | None = None,
) -> list[BadpixPlan]:
    """The masks to build: per set-up (the rules' ``[badpix]`` ``exact`` columns) and night,
    from the night's master darks and flats (not marked bad), or, for lights that no master dark
    serves, from those lights (at least ``min_frames`` of them) and the night's flats. A mask
    made from a sequence's lights is made once: a later run with more lights of that night
    (``archive watch``) keeps it rather than remaking it and every light calibrated with it.

    Parameters
    ----------
    session : Session
    filters : FrameFilter, optional
        Which nights, instruments, dates (the type is set here).
    rules : RuleBook, optional

    Returns
    -------
    list of BadpixPlan
    """
    base = replace(filters or FrameFilter(), include_duplicates=False)
    names = instrument_names(session)
    groups: dict[tuple, BadpixPlan] = {}

    def plan_for(frame: Frame) -> BadpixPlan | None:
        matching = rules_for(rules, names.get(frame.instrument_id))
        if BADPIX not in matching.kinds or frame.night is None:
            return None
        exact = matching[BADPIX].exact
        key = (frame.instrument_id, *_group_key(frame, exact))
        if key not in groups:
            groups[key] = BadpixPlan(
                names.get(frame.instrument_id),
                {
                    **{c: match_value(frame, c) for c in exact if c != "instrument"},
                    "night": frame.night,
                },
            )
        return groups[key]

    for kind in ("dark", "flat"):
        query = frame_query(replace(base, image_type=f"master_{kind}")).join(
            Master, Master.frame_id == Frame.id
        )
        for frame in session.scalars(
            query.where(~Master.is_bad).order_by(Frame.date_obs_s, Frame.id)
        ):
            plan = plan_for(frame)
            if plan is not None:
                (plan.darks if kind == "dark" else plan.flats).append(frame)
    # a sequence's mask from its lights is made once: lights added later (archive watch runs the
    # night again as they arrive) do not remake it, nor the night's calibrated lights with it
    made_from_lights = set()
    for mframe in session.scalars(
        select(Frame)
        .join(Master, Master.frame_id == Frame.id)
        .where(
            Master.kind == BADPIX,
            Master.combine_method == "badpix:lights",
            ~Master.is_bad,
        )
    ):
        matching = rules_for(rules, names.get(mframe.instrument_id))
        if BADPIX in matching.kinds:
            made_from_lights.add(
                (mframe.instrument_id, *_group_key(mframe, matching[BADPIX].exact))
            )
    by_group: dict[tuple, list[Frame]] = defaultdict(list)
    for light in session.scalars(
        frame_query(replace(base, image_type="light")).order_by(
            Frame.date_obs_s, Frame.id
        )
    ):
        matching = rules_for(rules, names.get(light.instrument_id))
        if BADPIX in matching.kinds and light.night is not None:
            by_group[
                (light.instrument_id, *_group_key(light, matching[BADPIX].exact))
            ].append(light)
    for key, lights in by_group.items():
        if key in made_from_lights:
            if key in groups and not groups[key].darks:
                del groups[key]  # its flats are in that mask already
            continue
        if (
            len(lights)
            < rules_for(rules, names.get(lights[0].instrument_id))[BADPIX].min_frames
        ):
            continue
        if explain_selection(
            session, lights[len(lights) // 2], "dark", rules=rules
        ).found:
            continue  # a master dark serves the sequence: its hot pixels come from there
        plan = plan_for(lights[0])
        if plan is not None and not plan.darks:
            plan.lights = lights
    return [p for p in groups.values() if p.darks or p.flats or p.lights]


@dataclass
class _Counts:
    hot: int = 0
    cold: int = 0


def compute_mask(
    plan: BadpixPlan, paths: dict[int, str], settings: BadPixelSettings
) -> tuple[np.ndarray, _Counts]:
    """The mask of ``plan`` (uint8: :data:`HOT`, :data:`COLD`) and how many pixels of each.

    Raises
    ------
    ValueError
        The inputs' shapes differ.
    OSError
        An input cannot be read.
    """
    bayer = plan.frames[0].bayer_pattern
    mask: np.ndarray | None = None

    def area(frame: Frame) -> tuple[slice, slice]:
        """The frame's light-sensitive area: an overscan strip's level would make its
        neighbours outliers, and the strip is cut from every calibrated light anyway."""
        shape = (frame.naxis2 or 0, frame.naxis1 or 0)
        return trim_slices(detector_geometry(header_from_text(frame.header), shape, plan.instrument), shape)

    def pixels(frame: Frame, dtype: Any = np.float64) -> np.ndarray:
        return read_pixels(paths[frame.id], frame.hdu_index, dtype=dtype)[0][area(frame)]

    def add(frame: Frame, bits: np.ndarray, value: int) -> None:
        nonlocal mask
        if mask is None:
            mask = np.zeros((frame.naxis2 or 0, frame.naxis1 or 0), dtype=np.uint8)
        inside = mask[area(frame)]  # a view
        if bits.shape != inside.shape:
            raise ValueError(f"bad-pixel inputs of shapes {bits.shape} and {inside.shape}")
        inside[bits] |= np.uint8(value)

    for frame in plan.darks:
        add(frame, hot_pixels(pixels(frame), settings.hot_sigma, bayer), HOT)
    if plan.lights and not plan.darks:
        step = max(1, len(plan.lights))
        picks = np.unique(
            np.linspace(0, step - 1, min(step, settings.lights_max_frames))
            .round()
            .astype(int)
        )
        lights = (pixels(plan.lights[i], np.float32) for i in picks)
        add(plan.lights[picks[0]], mask_from_lights(lights, settings, bayer), HOT)
    for frame in plan.flats:
        add(frame, cold_pixels(pixels(frame), settings.ccdmask, bayer), COLD)
    return mask, _Counts(
        int(np.count_nonzero(mask & HOT)), int(np.count_nonzero(mask & COLD))
    )


def _header(
    plan: BadpixPlan, fp: str, rule_version: str, counts: _Counts, names: Sequence[str]
) -> fits.Header:
    first = header_from_text(plan.frames[0].header)
    first.strip()
    for key in (
        "BZERO",
        "BSCALE",
        "BUNIT",
        kw.EXPOSURE_TIME,
        kw.NCOMBINE,
        kw.COMBINE,
        kw.BIAS_SUBTRACTED,
        kw.NORMALIZED,
        "FILTER",
        kw.HISTORY,
    ):
        first.remove(key, ignore_missing=True, remove_all=True)
    dates = [f.date_obs_s for f in plan.frames if f.date_obs_s is not None]
    if dates:
        first[kw.DATE_OBS] = (
            from_epoch_seconds(sum(dates) / len(dates)).isoformat(
                timespec="milliseconds"
            ),
            "mean DATE-OBS of the inputs (UTC)",
        )
    first[kw.IMAGE_TYPE] = (
        kw.IMAGE_TYPE_VALUES["master_badpix"],
        "archive bad-pixel mask (1 hot, 2 cold)",
    )
    first[kw.NCOMBINE] = (len(plan.frames), "frames the mask is made from")
    first[kw.BADPIX_SOURCE] = (plan.source, "hot pixels from master darks or lights")
    first[kw.BADPIX_HOT] = (counts.hot, "hot pixels (value 1)")
    first[kw.BADPIX_COLD] = (counts.cold, "cold pixels from master flats (value 2)")
    first[kw.RULE_VERSION] = (rule_version, "archive matching rules")
    first[kw.REDUCTION_STEP] = ("master_badpix", "archive reduction step")
    first[kw.FINGERPRINT] = fp
    for frame, name in zip(plan.frames, names):
        first[kw.HISTORY] = f"input {name} sha256:{frame.sha256[:16]}"
    return first


def _roles(plan: BadpixPlan) -> list[tuple[Frame, str]]:
    return (
        [(f, "master_dark") for f in plan.darks]
        + [(f, "master_flat") for f in plan.flats]
        + [(f, "light") for f in plan.lights]
    )


def build_badpix(
    engine: Engine,
    *,
    filters: FrameFilter | None,
    rules: RuleBook | MatchingRules,
    library: Path,
    products: ProductRun,
    summary: Any,
    progress: Progress | None = None,
) -> None:
    """Build the bad-pixel masks of :func:`plan_badpix` into ``library/<instrument>/badpix/``.

    Each mask is a master of kind ``badpix``: its fingerprint (inputs with roles, the settings,
    the rule version) makes a rebuild with the same inputs a no-op; written under a temporary
    name then renamed, catalogued with its reduction (:func:`archive.ingest.products.record_product`).
    Outcomes go to ``summary`` (:class:`archive.calib.masters.BuildSummary`: built, unchanged,
    failed, busy).
    """
    progress = progress or NoProgress()
    with session_scope(engine) as session:
        plans = plan_badpix(session, filters=filters, rules=rules)
    progress.start(len(plans), "bad-pixel mask")
    for plan in plans:
        try:
            _build_one(engine, plan, rules, library, products, summary)
        except (ArchiveError, OSError, ValueError) as exc:
            summary.failed.append((BADPIX, plan.describe(), str(exc)))
            log.warning("bad-pixel mask %s failed: %s", plan.describe(), exc)
        progress.advance()
    progress.finish()


def _done(session: Session, fp: str) -> bool:
    return (
        session.scalar(
            select(Reduction.id)
            .where(
                Reduction.fingerprint == fp,
                Reduction.status == "done",
                ~pruned_condition(),
            )
            .limit(1)
        )
        is not None
    )


def _build_one(
    engine: Engine,
    plan: BadpixPlan,
    rules: RuleBook | MatchingRules,
    library: Path,
    products: ProductRun,
    summary: Any,
) -> None:
    matching = rules_for(rules, plan.instrument)
    settings = bad_pixel_settings(plan.instrument)
    parameters = {
        "source": plan.source,
        "group": {k: str(v) for k, v in plan.key.items()},
        **settings.parameters,
    }
    roles = _roles(plan)
    fp = fingerprint(
        "master_badpix",
        [(f.sha256, role) for f, role in roles],
        parameters,
        matching.version,
    )
    with session_scope(engine) as session:
        if _done(session, fp):
            summary.unchanged += 1
            return
        paths = canonical_paths(session, [f.id for f in plan.frames])
    missing = [f.id for f in plan.frames if f.id not in paths]
    if missing:
        raise ArchiveError(
            f"frame(s) #{', #'.join(map(str, missing))} have no file on disk"
        )
    mask, counts = compute_mask(plan, paths, settings)
    header = _header(
        plan,
        fp,
        matching.version,
        counts,
        [Path(paths[f.id]).name for f in plan.frames],
    )
    setup = "_".join(
        safe_component(str(v), "x") for v in plan.key.values() if v is not None
    )
    target = render_path(
        library,
        LIBRARY_LAYOUT,
        instrument=safe_component(plan.instrument, "unknown-instrument"),
        kind=BADPIX,
        name=f"{safe_component(f'master_badpix_{setup}')}_{fp[:10]}.fits",
    )
    with session_scope(engine, write=True) as session:
        reduction = start_reduction(
            session,
            "master_badpix",
            fp,
            parameters,
            matching.version,
            [(f.id, role) for f, role in roles],
        )
        reduction_id = reduction.id if reduction is not None else None
        done = reduction is None and _done(session, fp)
    if reduction_id is None:
        if done:
            summary.unchanged += 1
        else:
            summary.busy += 1
        return
    try:
        write_atomic(target, mask, header, dtype=np.uint8)

        def link(session: Session, frame_id: int) -> None:
            master = session.get(Master, frame_id) or Master(
                frame_id=frame_id, kind=BADPIX, created_at=utcnow()
            )
            master.kind, master.origin = BADPIX, "built"
            master.n_combined, master.combine_method = (
                len(plan.frames),
                f"badpix:{plan.source}",
            )
            master.bias_subtracted, master.rule_version = False, matching.version
            master.is_bad = bool(master.is_bad)
            session.add(master)

        frame_id = record_product(products, reduction_id, target, link=link)
        summary.built.append((BADPIX, frame_id, str(target)))
        log.info(
            "built bad-pixel mask %s (%d hot, %d cold) -> %s",
            plan.describe(),
            counts.hot,
            counts.cold,
            target,
        )
    except BaseException as exc:
        fail_product(
            engine,
            reduction_id,
            str(exc) or type(exc).__name__,
            failure="error" if isinstance(exc, Exception) else "interrupted",
        )
        raise
