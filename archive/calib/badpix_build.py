"""Bad-pixel masks, planning and building: which masks to make from which frames, and making
and recording them (issue 10).

:func:`plan_badpix` groups the frames a mask is made from: per instrument set-up (the
``exact`` columns of the rules' ``[badpix]``) and night, the night's master darks and flats,
or a sequence's lights when no master dark serves them. :func:`compute_mask` reads the
inputs' light-sensitive areas and judges their pixels by the rules of
:mod:`archive.calib.badpix`. :func:`build_badpix` writes each mask, a uint8 image in the
detector's raw geometry (1 hot, 2 cold, 3 both; 0 good), as a master of kind ``badpix`` with
its provenance (inputs with roles, parameters, rule version) through the one product protocol
(:func:`archive.ingest.products.record_product`), as :mod:`archive.calib.masters` records
masters.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from archive import keywords as kw
from archive.calib.badpix import (
    COLD,
    HOT,
    BadPixelSettings,
    bad_pixel_settings,
    cold_pixels,
    hot_pixels,
    mask_from_lights,
)
from archive.calib.overscan import detector_geometry, trim_slices
from archive.calib.record import is_done, library_target, record_master
from archive.calib.rules import MatchingRules, RuleBook
from archive.calib.select import explain_selection
from archive.calib.selection import match_value, rules_for
from archive.db.frames import (
    FrameFilter,
    canonical_paths,
    frame_query,
    instrument_names,
)
from archive.db.models import BADPIX, Frame, Master
from archive.db.provenance import fingerprint
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.files import safe_component
from archive.fitsio import read_pixels
from archive.ingest.cards import header_from_text
from archive.ingest.products import ProductRun
from archive.ingest.timing import from_epoch_seconds
from archive.progress import NoProgress, Progress

log = logging.getLogger(__name__)


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
    areas: dict[int, tuple[slice, slice]] = {}

    def area(frame: Frame) -> tuple[slice, slice]:
        """The frame's light-sensitive area (its header parsed once): an overscan strip's level
        would make its neighbours outliers, and the strip is cut from every calibrated light anyway."""
        if frame.id not in areas:
            shape = (frame.naxis2 or 0, frame.naxis1 or 0)
            areas[frame.id] = trim_slices(detector_geometry(header_from_text(frame.header), shape, plan.instrument),
                                          shape)
        return areas[frame.id]

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
        if is_done(session, fp):
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
    record_master(
        engine,
        BADPIX,
        fp,
        parameters,
        [(f.id, role) for f, role in roles],
        library_target(library, plan.instrument, BADPIX, setup, fp),
        mask,
        header,
        products,
        summary,
        what=f"{plan.describe()} ({counts.hot} hot, {counts.cold} cold)",
        rule_version=matching.version,
        n_combined=len(plan.frames),
        combine_method=f"badpix:{plan.source}",
        dtype=np.uint8,
    )
