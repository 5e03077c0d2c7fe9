"""The vocabulary of master selection: the decision, the candidates' verdicts, the rules' values.

The rule, after Gemini's calibration manager and LCO BANZAI: the candidate must match the
``exact`` columns, lie within the ``tolerance`` (deg C, s), be no more than ``max_age_days``
from the frame, not be flagged bad and be valid at the frame's time. Among the survivors an
exact-exposure dark beats a scaled one, a scaled dark prefers the nearest longer exposure
(then an interpolated dark, a dark ladder's model within its exposure range, a shorter dark
scaled up);
then the nearest in time wins, ties going to more input frames, then the most recently built,
then the larger frame id (so the choice is deterministic).

Two paths apply it and give the same answer: :mod:`archive.calib.select` (one frame, every
candidate judged and explained) and :mod:`archive.calib.select_sql` (many frames, set-based
SQL). :func:`match_value` and :func:`exposure_key` are what both, and the grouping of raw
calibrations into masters (:mod:`archive.calib.plan`), compare, so the three never drift apart.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from archive.calib.rules import MatchingRules, RuleBook, default_rulebook
from archive.db.models import Frame

SECONDS_PER_DAY = 86400.0


@dataclass
class Verdict:
    """One candidate master as judged for one frame.

    Attributes
    ----------
    master_id : int
    date_obs : datetime or None
    exposure_time_s : float or None
    n_combined : int or None
    delta_s : int or None
        |DATE-OBS difference| to the frame, s.
    rejected_by : str or None
        The first rule the candidate fails (e.g. ``exact:filter_name``, ``tolerance:set_temp_c``,
        ``max_age_days``, ``exposure``, ``is_bad``, ``validity``), ``None`` for a survivor.
    reason : str or None
        The rule in words, with the values compared.
    method : str or None
        exact | scaled (| interpolated | model) for darks, exact for bias and flat; ``None``
        when rejected.
    rank : int or None
        1 for the chosen master, 2, 3, ... for the other survivors.
    """

    master_id: int
    date_obs: dt.datetime | None
    exposure_time_s: float | None
    n_combined: int | None
    delta_s: int | None
    rejected_by: str | None = None
    reason: str | None = None
    method: str | None = None
    rank: int | None = None
    sort_key: tuple = field(default=(), repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready values (for ``calibration_selections.candidates``)."""
        return {
            "master_id": self.master_id,
            "date_obs": self.date_obs.isoformat() if self.date_obs else None,
            "exposure_time_s": self.exposure_time_s, "n_combined": self.n_combined, "delta_s": self.delta_s,
            "rejected_by": self.rejected_by, "reason": self.reason, "method": self.method, "rank": self.rank,
        }


@dataclass
class Selection:
    """The masters that calibrate one frame for one kind, and why.

    Attributes
    ----------
    frame_id : int
    kind : {'bias', 'dark', 'flat'}
    method : {'exact', 'scaled', 'interpolated', 'model', 'none'}
    master_id : int or None
        The chosen master (for 'interpolated', the one nearest in time among those combined).
    scale : float or None
        'scaled': frame exposure / master exposure.
    weights : list of (int, float)
        (master frame id, weight): the calibration is ``sum(weight * master)``. One pair of
        weight 1 for 'exact', weight ``scale`` for 'scaled', the least-squares weights of
        dark = A*t + B evaluated at the frame's exposure for 'interpolated', for 'model' one
        pair (the dark model, the frame's exposure t): the dark is intercept + slope * t
        (:mod:`archive.calib.ladder`).
    rule_version : str
    candidates : list of Verdict
    explanation : str
        One sentence: what was chosen, or the rule that removed the last candidates.
    """

    frame_id: int
    kind: str
    method: str
    master_id: int | None
    scale: float | None
    weights: list[tuple[int, float]]
    rule_version: str
    candidates: list[Verdict]
    explanation: str
    detail: dict[str, Any] | None = None

    @property
    def found(self) -> bool:
        """A master (or a combination) was found."""
        return self.method != "none"


def rules_for(rules: RuleBook | MatchingRules | None, instrument: str | None) -> MatchingRules:
    """The :class:`MatchingRules` of ``instrument`` from a rule book (or the rules themselves).

    Parameters
    ----------
    rules : RuleBook or MatchingRules or None
        None: the bundled ``configs/matching``.
    instrument : str or None
        Instrument name; None or one without an override gets the default rules.

    Returns
    -------
    MatchingRules

    Raises
    ------
    ConfigError
        ``rules`` is None and the bundled rules are invalid.
    """
    if rules is None:
        rules = default_rulebook()
    if isinstance(rules, RuleBook):
        return rules.for_instrument(instrument)
    return rules


def match_value(frame: Frame, column: str) -> Any:
    """The value of a rule column of ``frame``, as grouping and selection compare it.

    Parameters
    ----------
    frame : Frame
    column : str
        One of :data:`archive.calib.rules.MATCH_COLUMNS`.

    Returns
    -------
    Any
        ``frames.instrument_id`` for ``instrument``, else the frame's normalized column (None
        when unknown; units of the column, e.g. deg C, s).
    """
    return frame.instrument_id if column == "instrument" else getattr(frame, column)


def exposure_key(exposure_s: float | None, tolerance_s: float) -> int | None:
    """The exposure time as a multiple of ``tolerance_s``, rounded half up.

    Two darks have "the same exposure" when their keys are equal (used to group raw darks and
    to select masters).

    Parameters
    ----------
    exposure_s : float or None
        Exposure time, s.
    tolerance_s : float
        ``exposure_tolerance_s`` of the dark rules, s.

    Returns
    -------
    int or None
        None for an unknown exposure (never taken as 0).
    """
    if exposure_s is None:
        return None
    return math.floor(exposure_s / max(tolerance_s, 1e-9) + 0.5)
