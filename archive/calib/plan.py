"""Planning masters: the ingested raw calibrations grouped by the matching rules.

The same rules group raw frames into masters here and select masters for lights
(:mod:`archive.calib.selection`), so the two never drift apart (after LCO BANZAI's
CALIBRATION_SET_CRITERIA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from archive.calib.rules import MatchingRules, RuleBook, default_rulebook
from archive.calib.selection import exposure_key, match_value, rules_for
from archive.db.models import Frame
from archive.db.frames import FrameFilter, frame_query, instrument_names

log = logging.getLogger(__name__)


# -- planning: raw calibrations grouped by the rules -------------------------------------------


@dataclass
class MasterPlan:
    """One master to build: a group of raw frames that the rules put together.

    Attributes
    ----------
    kind : {'bias', 'dark', 'flat'}
    frames : list of Frame
        The raw inputs, ordered by DATE-OBS.
    key : dict
        The group's values of the exact keys (and night; exposure for darks).
    rules : MatchingRules
    instrument : str or None
        The instrument's name (the first folder of the master's path).
    """

    kind: str
    frames: list[Frame]
    key: dict[str, Any]
    rules: MatchingRules
    instrument: str | None = None

    @property
    def night(self) -> dt.date | None:
        """The observing night of the group."""
        return self.key.get("night")


def split_tolerance(frames: list[Frame], tolerance: dict[str, float]) -> list[list[Frame]]:
    """Split a group so that, per tolerance column, a subgroup spans at most the tolerance."""
    groups = [frames]
    for column, limit in tolerance.items():
        out = []
        for group in groups:
            known = sorted((f for f in group if getattr(f, column) is not None), key=lambda f: (getattr(f, column), f.id))
            unknown = [f for f in group if getattr(f, column) is None]
            current: list[Frame] = []
            for f in known:
                if current and getattr(f, column) - getattr(current[0], column) > limit + 1e-9:
                    out.append(current)
                    current = []
                current.append(f)
            if current:
                out.append(current)
            if unknown:
                out.append(unknown)
        groups = out
    return groups


def setup_groups(
    session: Session,
    kind: str,
    *,
    filters: FrameFilter | None = None,
    rules: RuleBook | MatchingRules | None = None,
    by_exposure: bool = False,
    keep: Callable[[Frame, Any], bool] | None = None,
) -> tuple[list[tuple[dict[str, Any], list[Frame], MatchingRules, Any]], int]:
    """The raw calibrations of ``kind`` grouped by instrument set-up and night: the night and
    the values of ``rules[kind].exact`` shared, each ``tolerance`` spanned at most
    (:func:`split_tolerance`); duplicate exposures count once.

    Parameters
    ----------
    session : Session
    kind : {'bias', 'dark', 'flat'}
    filters : FrameFilter, optional
        Which raw calibrations; the type is set to ``kind``.
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.
    by_exposure : bool
        The exposure (within ``exposure_tolerance_s``) is part of the group too (master darks).
    keep : callable, optional
        (frame, the kind's rules) -> whether the frame takes part (a dark ladder: known exposures
        of instruments whose rules allow ladders).

    Returns
    -------
    groups : list of (dict, list of Frame, MatchingRules, instrument name)
        The group's key values, its frames by DATE-OBS, its rules and instrument.
    no_date : int
        Frames without DATE-OBS (or night), left out.
    """
    rules = rules if rules is not None else default_rulebook()
    book = rules if isinstance(rules, RuleBook) else None
    base = filters or FrameFilter()
    query = frame_query(replace(base, image_type=kind, include_duplicates=False))
    frames = list(session.scalars(query.order_by(Frame.date_obs_s, Frame.id)))
    no_date = sum(1 for f in frames if f.date_obs_s is None or f.night is None)
    names = instrument_names(session, {f.instrument_id for f in frames})
    grouped: dict[tuple, list[Frame]] = defaultdict(list)
    for frame in frames:
        if frame.date_obs_s is None or frame.night is None:
            continue
        kr = rules_for(book or rules, names.get(frame.instrument_id))[kind]
        if keep is not None and not keep(frame, kr):
            continue
        key = [("night", frame.night)] + [(c, match_value(frame, c)) for c in kr.exact]
        if by_exposure:
            key.append(("exposure_time_s", exposure_key(frame.exposure_time_s, kr.exposure_tolerance_s)))
        grouped[tuple(key)].append(frame)
    groups = []
    for key, members in grouped.items():
        instrument = names.get(members[0].instrument_id)
        matching = rules_for(book or rules, instrument)
        for part in split_tolerance(members, matching[kind].tolerance):
            part.sort(key=lambda f: (f.date_obs_s, f.id))
            groups.append((dict(key), part, matching, instrument))
    return groups, no_date


def plan_masters(
    session: Session,
    kind: str,
    *,
    filters: FrameFilter | None = None,
    rules: RuleBook | MatchingRules | None = None,
) -> tuple[list[MasterPlan], list[tuple[str, int]], int]:
    """Group the raw calibrations of ``kind`` by the matching rules, one master per group.

    A group shares the night, the values of ``rules[kind].exact`` (and, for darks, the exposure
    within ``exposure_tolerance_s``) and spans at most each ``tolerance``. Duplicate exposures
    count once.

    Parameters
    ----------
    session : Session
    kind : {'bias', 'dark', 'flat'}
    filters : FrameFilter, optional
        Which raw calibrations (night, since/until, instrument, ...); the type is set to ``kind``.
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.

    Returns
    -------
    plans : list of MasterPlan
        Groups of at least ``min_frames`` frames.
    too_small : list of (description, count)
    no_date : int
        Frames without DATE-OBS, left out.

    Raises
    ------
    ConfigError
        No rules for ``kind``.
    """
    groups, no_date = setup_groups(session, kind, filters=filters, rules=rules, by_exposure=kind == "dark")
    plans, too_small = [], []
    for values, part, matching, instrument in groups:
        if kind == "dark":
            values["exposure_time_s"] = part[0].exposure_time_s
        plan = MasterPlan(kind, part, values, matching, instrument)
        if len(part) < matching[kind].min_frames:
            too_small.append((describe(plan), len(part)))
        else:
            plans.append(plan)
    plans.sort(key=lambda p: (p.frames[0].date_obs_s, p.frames[0].id))
    return plans, too_small, no_date


def describe(plan: MasterPlan) -> str:
    """A short readable name of a group: instrument, night, binning, exposure, filter, temperature.

    Parameters
    ----------
    plan : MasterPlan

    Returns
    -------
    str
        E.g. ``'ZWO ASI2600MM Pro 2026-03-02 bin1x1 60s g100 -10C'`` (exposure in s, set-point in deg C).
    """
    return " ".join(describe_parts(plan))


def describe_parts(plan: MasterPlan) -> list[str]:
    """The parts of :func:`describe`, as a list (instrument, night, binning, exposure, filter, gain, set-point)."""
    first = plan.frames[0]
    parts = [plan.instrument or "unknown-instrument", str(plan.night)]
    if first.binning_x is not None:
        parts.append(f"bin{first.binning_x}x{first.binning_y}")
    if plan.kind == "dark" and first.exposure_time_s is not None:
        parts.append(f"{first.exposure_time_s:g}s")
    if plan.kind == "flat" and first.filter_name:
        parts.append(first.filter_name)
    if first.gain is not None:
        parts.append(f"g{first.gain:g}")
    if first.set_temp_c is not None:
        parts.append(f"{first.set_temp_c:g}C")
    return parts

