"""Choosing master calibrations for frames, by the matching rules, as database queries.

Two paths give the same answer:

* :func:`select_master` (one frame) evaluates every rule on every candidate in Python and keeps
  the verdicts, so the decision can be explained (``--explain``) and stored with its rejected
  candidates (:func:`record_selection`);
* :func:`select_masters` (many frames) is set-based SQL, a few statements per kind whatever
  the number of frames: the frames' and the candidates' match keys go into temporary tables,
  and one statement finds every frame's nearest valid candidate before and after it by index
  seeks on (keys, ``frames.date_obs_s``); a window over the candidates finds scaled darks.
  Frames it cannot serve with an exact or scaled master (an interpolated dark, or nothing) fall
  back to the Python path.

The rule, after Gemini's calibration manager and LCO BANZAI: the candidate must match the
``exact`` columns, lie within the ``tolerance`` (deg C, s), be no more than ``max_age_days``
from the frame, not be flagged bad and be valid at the frame's time. Among the survivors an
exact-exposure dark beats a scaled one, a scaled dark prefers the nearest longer exposure;
then the nearest in time wins, ties going to more input frames, then the most recently built,
then the larger frame id (so the choice is deterministic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, and_, func, or_, select, text,
)
from sqlalchemy.orm import Session

from archive.calib.rules import TEXT_COLUMNS, KindRules, MatchingRules, RuleBook, default_rulebook
from archive.db.base import utcnow
from archive.db.bulk import chunked, index_seeks, insert_rows
from archive.db.models import (
    CALIBRATION_KINDS, CalibrationSelection, Frame, Instrument, Master,
)
from archive.errors import CalibrationNotFoundError

SECONDS_PER_DAY = 86400.0
_NULL_NUMBER = -987654321.0
_NULL_TEXT = "\x01(null)"


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
        exact | scaled for darks, exact for bias and flat; ``None`` when rejected.
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
    method : {'exact', 'scaled', 'interpolated', 'none'}
    master_id : int or None
        The chosen master (for 'interpolated', the one nearest in time among those combined).
    scale : float or None
        'scaled': frame exposure / master exposure.
    weights : list of (int, float)
        (master frame id, weight): the calibration is ``sum(weight * master)``. One pair of
        weight 1 for 'exact', weight ``scale`` for 'scaled', the least-squares weights of
        dark = A*t + B evaluated at the frame's exposure for 'interpolated'.
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


# -- the rules in Python: one frame, every candidate explained --------------------------------


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


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b


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


def _judge(frame: Frame, master: Master, mframe: Frame, rules: KindRules) -> Verdict:
    delta = (
        abs(frame.date_obs_s - mframe.date_obs_s)
        if frame.date_obs_s is not None and mframe.date_obs_s is not None else None
    )
    verdict = Verdict(mframe.id, mframe.date_obs, mframe.exposure_time_s, master.n_combined, delta)

    def reject(rule: str, reason: str) -> Verdict:
        verdict.rejected_by, verdict.reason = rule, reason
        return verdict

    for column in rules.exact:
        mine, theirs = match_value(frame, column), match_value(mframe, column)
        if not _equal(mine, theirs):
            if column == "instrument":
                mine = frame.instrument.name if frame.instrument else None
                theirs = mframe.instrument.name if mframe.instrument else None
            return reject(f"exact:{column}", f"{column} {theirs!r} differs from the frame's {mine!r}")
    for column, limit in rules.tolerance.items():
        mine, theirs = match_value(frame, column), match_value(mframe, column)
        if mine is None or theirs is None:
            if mine is None and theirs is None:
                continue
            return reject(f"tolerance:{column}", f"{column} is unknown on one side ({theirs!r} vs {mine!r})")
        if abs(theirs - mine) > limit + 1e-9:
            return reject(f"tolerance:{column}", f"|{column} {theirs} - {mine}| > {limit}")
    method = "exact"
    if rules.kind == "dark":
        method = _dark_method(frame, master, mframe, rules)
        if method is None:
            return reject(
                "exposure",
                f"exposure {mframe.exposure_time_s} s cannot serve {frame.exposure_time_s} s"
                + ("" if master.bias_subtracted else " (not bias-subtracted: cannot scale)"),
            )
    if delta is None:
        return reject("max_age_days", "no DATE-OBS on the frame or the master")
    if delta > rules.max_age_days * SECONDS_PER_DAY:
        return reject("max_age_days", f"{delta / SECONDS_PER_DAY:.1f} days apart > {rules.max_age_days:g}")
    if master.is_bad:
        return reject("is_bad", f"flagged bad: {master.bad_reason or 'no reason given'}")
    if (master.valid_from is not None and (frame.date_obs is None or frame.date_obs < master.valid_from)) or (
        master.valid_until is not None and (frame.date_obs is None or frame.date_obs >= master.valid_until)
    ):
        return reject("validity", f"valid {master.valid_from or '...'} to {master.valid_until or '...'}")
    verdict.method = method
    exposure_order = mframe.exposure_time_s if method == "scaled" else 0.0
    verdict.sort_key = (
        0 if method == "exact" else 1, exposure_order, delta, -(master.n_combined or 0),
        -(_us(master.created_at) or 0), -mframe.id,
    )
    return verdict


def _dark_method(frame: Frame, master: Master, mframe: Frame, rules: KindRules) -> str | None:
    t, tm = frame.exposure_time_s, mframe.exposure_time_s
    if t is None or tm is None:
        return "exact" if t is None and tm is None else None
    if exposure_key(t, rules.exposure_tolerance_s) == exposure_key(tm, rules.exposure_tolerance_s):
        return "exact"
    if rules.scale and master.bias_subtracted and tm > t:
        return "scaled"
    return None


def interpolation_weights(exposures: Sequence[float], t: float) -> list[float]:
    """Weights w such that ``sum(w_i * D_i)`` is the least-squares line D = A*t + B at ``t``.

    Parameters
    ----------
    exposures : sequence of float
        Exposure times t_i (s) of the master darks D_i; at least two distinct values.
    t : float
        Exposure time (s) to evaluate at.

    Returns
    -------
    list of float
        w_i = 1/n + (t - mean)(t_i - mean) / sum_j (t_j - mean)^2 (the hat-matrix row of
        ordinary least squares; astro_reduce fits dark = A*t + B pixel-wise the same way).

    Raises
    ------
    ValueError
        Fewer than two distinct exposure times.
    """
    n = len(exposures)
    mean = sum(exposures) / n
    ss = sum((ti - mean) ** 2 for ti in exposures)
    if n < 2 or ss <= 0:
        raise ValueError("interpolation needs master darks of at least two distinct exposure times")
    return [1.0 / n + (t - mean) * (ti - mean) / ss for ti in exposures]


def _interpolate(frame: Frame, pairs: list[tuple[Master, Frame, Verdict]], rules: KindRules) -> tuple[list[tuple[int, float]], dict] | None:
    """Bias-subtracted darks rejected only for their exposure: the nearest in time per exposure
    (exposures within ``exposure_tolerance_s`` count as one, as when grouping and matching)."""
    if not rules.interpolate or frame.exposure_time_s is None:
        return None
    best: dict[int, tuple[Master, Frame, Verdict]] = {}
    for master, mframe, verdict in pairs:
        if not master.bias_subtracted or mframe.exposure_time_s is None:
            continue
        # every rule but the exposure one must pass: re-judge with exposure ignored
        key = exposure_key(mframe.exposure_time_s, rules.exposure_tolerance_s)
        order = (verdict.delta_s, -(master.n_combined or 0), -(_us(master.created_at) or 0), -mframe.id)
        if key not in best or order < best[key][2].sort_key:
            verdict.sort_key = order
            best[key] = (master, mframe, verdict)
    if len(best) < 2:
        return None
    chosen = sorted(best.values(), key=lambda p: p[1].exposure_time_s)
    exposures = [p[1].exposure_time_s for p in chosen]
    weights = interpolation_weights(exposures, frame.exposure_time_s)
    return (
        [(p[1].id, w) for p, w in zip(chosen, weights)],
        {"fit": "dark = A*t + B (least squares)", "exposures_s": exposures, "t_s": frame.exposure_time_s},
    )


def masters_of(session: Session, kind: str) -> list[tuple[Master, Frame]]:
    """The library of one calibration kind: every (Master, Frame) pair, bad ones included
    (selection rejects them with a reason). Load it once to judge many frames."""
    rows = session.execute(
        select(Master, Frame).join(Frame, Frame.id == Master.frame_id).where(Master.kind == kind).order_by(Frame.id)
    )
    return [(master, frame) for master, frame in rows]


def explain_selection(
    session: Session, frame: Frame, kind: str, *, rules: RuleBook | MatchingRules | None = None,
    library: list[tuple[Master, Frame]] | None = None,
) -> Selection:
    """Judge every master of ``kind`` for ``frame`` and choose one, keeping every verdict.

    Parameters
    ----------
    session : Session
    frame : Frame
        The frame to calibrate (usually a light; a raw flat for the dark of a master flat).
    kind : {'bias', 'dark', 'flat'}
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``; a rule book gives the frame's instrument's rules.
    library : list of (Master, Frame), optional
        The masters of ``kind``, when the caller has already loaded them (judging many frames).

    Returns
    -------
    Selection
        ``method == 'none'`` when nothing passes; ``explanation`` then names the rule that
        removed the last candidates.

    Raises
    ------
    ValueError
        ``kind`` is not a calibration kind.
    """
    if kind not in CALIBRATION_KINDS:
        raise ValueError(f"unknown calibration kind {kind!r}; choose from {CALIBRATION_KINDS}")
    matching = rules_for(rules, frame.instrument.name if frame.instrument else None)
    kind_rules = matching[kind]
    candidates = library if library is not None else masters_of(session, kind)
    judged = [(m, f, _judge(frame, m, f, kind_rules)) for m, f in candidates if f.id != frame.id]
    verdicts = [v for _, _, v in judged]
    survivors = sorted((v for v in verdicts if v.rejected_by is None), key=lambda v: v.sort_key)
    for rank, verdict in enumerate(survivors, 1):
        verdict.rank = rank
    if survivors:
        best = survivors[0]
        scale = frame.exposure_time_s / best.exposure_time_s if best.method == "scaled" else None
        weights = [(best.master_id, scale if scale is not None else 1.0)]
        explanation = f"{kind}: master {best.master_id} ({best.method}" + (
            f", scale {scale:.4g}" if scale is not None else "") + f"), {len(survivors)} of {len(verdicts)} candidates pass"
        return Selection(frame.id, kind, best.method, best.master_id, scale, weights, matching.version, verdicts, explanation)
    if kind == "dark":
        exposure_only = [(m, f, v) for m, f, v in judged if v.rejected_by == "exposure" and _passes_rest(frame, m, f, kind_rules)]
        interpolated = _interpolate(frame, exposure_only, kind_rules)
        if interpolated:
            weights, detail = interpolated
            used = {mid for mid, _ in weights}
            nearest = min((p for p in exposure_only if p[1].id in used), key=lambda p: (p[2].delta_s, -p[1].id))[1].id
            for verdict in verdicts:
                if verdict.master_id in used:
                    verdict.method = "interpolated"
            return Selection(
                frame.id, kind, "interpolated", nearest, None, weights, matching.version, verdicts,
                f"dark: interpolated from masters {sorted(used)} at {frame.exposure_time_s} s", detail,
            )
    return Selection(frame.id, kind, "none", None, None, [], matching.version, verdicts, _why_none(kind, verdicts, kind_rules))


def explain_selections(
    session: Session, frame_ids: Iterable[int], kinds: Sequence[str] = CALIBRATION_KINDS, *,
    rules: RuleBook | MatchingRules | None = None,
) -> dict[tuple[int, str], Selection]:
    """:func:`explain_selection` for many frames, every candidate of every kind judged and kept.

    Slower than :func:`select_masters` (every frame against every master of the kind, in
    Python) but each decision carries its verdicts, for ``--explain`` and for
    :func:`record_selection`. The library of each kind is loaded once.

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
        The frames to calibrate; ids not in the catalogue are left out.
    kinds : sequence of {'bias', 'dark', 'flat'}
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.

    Returns
    -------
    dict of (frame_id, kind) to Selection

    Raises
    ------
    ValueError
        A kind is not a calibration kind.
    """
    rules = rules if rules is not None else default_rulebook()
    libraries = {kind: masters_of(session, kind) for kind in kinds}
    out: dict[tuple[int, str], Selection] = {}
    for batch in chunked(list(dict.fromkeys(frame_ids))):
        for frame in session.scalars(select(Frame).where(Frame.id.in_(batch)).order_by(Frame.date_obs_s, Frame.id)):
            for kind in kinds:
                out[(frame.id, kind)] = explain_selection(session, frame, kind, rules=rules, library=libraries[kind])
    return out


def _passes_rest(frame: Frame, master: Master, mframe: Frame, rules: KindRules) -> bool:
    """Every rule but the exposure one passes (a candidate for interpolation)."""
    relaxed = replace(rules, kind="bias")
    return _judge(frame, master, mframe, relaxed).rejected_by is None


def _why_none(kind: str, verdicts: list[Verdict], rules: KindRules) -> str:
    if not verdicts:
        return f"no master {kind} in the library at all"
    order = []
    for column in rules.exact:
        order.append(f"exact:{column}")
    for column in rules.tolerance:
        order.append(f"tolerance:{column}")
    order += ["exposure", "max_age_days", "is_bad", "validity"]
    counts = {rule: sum(v.rejected_by == rule for v in verdicts) for rule in order}
    last = [rule for rule in order if counts[rule]][-1]
    example = next(v for v in verdicts if v.rejected_by == last)
    return (
        f"no master {kind}: the rule {last!r} removed the last {counts[last]} candidate(s) "
        f"(e.g. master {example.master_id}: {example.reason}); {len(verdicts)} considered"
    )


def select_master(
    session: Session, frame: Frame, kind: str, *, rules: RuleBook | MatchingRules | None = None
) -> Selection:
    """Select the master calibration frame that best matches ``frame``.

    Candidates must match ``rules[kind].exact`` (e.g. instrument, binning, gain), lie within
    ``rules[kind].tolerance`` (set-point temperature in deg C) and be no more than
    ``max_age_days`` from the frame; masters flagged bad or outside their validity are
    excluded. Darks: an exact exposure (within ``exposure_tolerance_s``) is preferred; else,
    when ``scale`` allows, the nearest longer bias-subtracted master scaled by t/t_dark; else,
    when ``interpolate`` allows, dark = A*t + B fitted by least squares over bias-subtracted
    masters of two or more exposures (astro_reduce's method). The nearest in time
    (|date_obs difference|, s) wins; ties go to more input frames, then the most recently
    built. Rule after the calibration association of Gemini's archive and LCO's BANZAI.

    Masters made elsewhere take part from their ingest on (which gives them a library row,
    :func:`archive.ingest.library.sync_library`).

    Parameters
    ----------
    session : Session
    frame : Frame
    kind : {'bias', 'dark', 'flat'}
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.

    Returns
    -------
    Selection
        The chosen master (``master_id``), the method, the weights and every candidate's verdict.

    Raises
    ------
    CalibrationNotFoundError
        No candidate passes; the message names the rule that removed the last candidates.
    """
    selection = explain_selection(session, frame, kind, rules=rules)
    if not selection.found:
        raise CalibrationNotFoundError(f"frame {frame.id}: {selection.explanation}")
    return selection


def record_selection(session: Session, selection: Selection, *, reduction_id: int | None = None) -> CalibrationSelection:
    """Store a decision (chosen master, method, scale, rule version, every candidate's verdict).

    The interpolated dark's masters and weights go to ``detail``.

    Parameters
    ----------
    session : Session
        Written to (flushed, not committed).
    selection : Selection
    reduction_id : int, optional
        The reduction that used the decision.

    Returns
    -------
    CalibrationSelection
        The new row, flushed (its id is set).
    """
    detail = dict(selection.detail or {})
    if selection.method == "interpolated":
        detail["weights"] = [[mid, w] for mid, w in selection.weights]
    row = CalibrationSelection(
        frame_id=selection.frame_id, kind=selection.kind, master_id=selection.master_id, method=selection.method,
        scale=selection.scale, rule_version=selection.rule_version, decided_at=utcnow(),
        candidates=[v.as_dict() for v in selection.candidates], detail=detail or None, reduction_id=reduction_id,
    )
    session.add(row)
    session.flush()
    return row


# -- the rules in SQL: many frames at once ------------------------------------------------------
#
# The frames and the candidate masters go into two temporary tables whose key columns hold the
# exact-match values (NULL replaced by a sentinel, so that "unknown" matches "unknown") and the
# exposure key of darks, computed by the same Python as the one-frame path. An index on the
# candidates' (keys, date_obs_s) lets each frame find its nearest candidate before and after
# it with two index seeks (correlated subqueries ordered by date_obs_s, LIMIT 1): the work per
# frame is bounded by the masters within max_age_days, however large the catalogue. The same
# statements run on SQLite and PostgreSQL.

_TEXT_COLUMNS = set(TEXT_COLUMNS)
_FRAME_COLUMNS = ("id", "instrument_id", "date_obs", "date_obs_s", "exposure_time_s", "binning_x", "binning_y",
                  "naxis1", "naxis2", "gain", "offset", "readout_mode", "filter_name", "telescope", "set_temp_c",
                  "ccd_temp_c")


_EPOCH = dt.datetime(1970, 1, 1)


def _us(value: dt.datetime | None) -> int | None:
    """A naive UTC datetime as integer microseconds since 1970 (exact, portable comparisons)."""
    if value is None:
        return None
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _key_table(name: str, keys: Sequence[str], tolerance: Sequence[str], *extra):
    """A temporary table of frames' match keys: id, k_<exact column>..., k_exposure,
    t_<tolerance column>..., t (date_obs_s), us (date_obs in microseconds), exposure_time_s."""
    metadata = MetaData()
    table = Table(
        name, metadata, Column("id", Integer, primary_key=True),
        *[Column(f"k_{c}", String(200) if c in _TEXT_COLUMNS else (Integer if c == "instrument" else Float)) for c in keys],
        Column("k_exposure", BigInteger), *[Column(f"t_{c}", Float) for c in tolerance],
        Column("t", BigInteger), Column("us", BigInteger), Column("exposure_time_s", Float), *extra,
        prefixes=["TEMPORARY"],
    )
    return metadata, table


def _candidate_table(rules: KindRules, uid: str):
    keys = list(rules.exact)
    metadata, cand = _key_table(
        f"sel_cand_{uid}", keys, list(rules.tolerance), Column("neg_n_combined", Integer),
        Column("neg_created_us", BigInteger), Column("neg_id", Integer), Column("valid_from_us", BigInteger),
        Column("valid_until_us", BigInteger), Column("bias_subtracted", Boolean),
    )
    # two orderings of (keys, exposure, time, tie-breaks): the nearest candidate before and after a
    # frame is then the first row of an index range scan (the tie-breaks are negated)
    prefix = [cand.c[f"k_{c}"] for c in keys] + [cand.c.k_exposure]
    ties = [cand.c.neg_n_combined, cand.c.neg_created_us, cand.c.neg_id]
    Index(f"ix_sel_after_{uid}", *prefix, cand.c.t, *ties)
    Index(f"ix_sel_before_{uid}", *prefix, cand.c.t.desc(), *ties)
    return metadata, cand, keys


def _key_function(keys: Sequence[str], tolerance: Sequence[str], exposure_tolerance_s: float | None):
    """row (in ``_FRAME_COLUMNS`` order) -> the key table's columns, as a tuple (``k_exposure``
    is 0 when ``exposure_tolerance_s`` is None: exposure is no key)."""
    position = {name: i for i, name in enumerate(_FRAME_COLUMNS)}
    key_at = [(position["instrument_id" if c == "instrument" else c], _NULL_TEXT if c in _TEXT_COLUMNS else _NULL_NUMBER)
              for c in keys]
    tol_at = [position[c] for c in tolerance]
    i_id, i_t, i_date, i_exp = position["id"], position["date_obs_s"], position["date_obs"], position["exposure_time_s"]

    def build(row) -> tuple:
        exp = row[i_exp]
        if exposure_tolerance_s is None:
            k_exp = 0
        else:
            k_exp = -1 if exp is None else exposure_key(exp, exposure_tolerance_s)
        return (
            row[i_id], *[row[i] if row[i] is not None else null for i, null in key_at], k_exp,
            *[row[i] for i in tol_at], row[i_t], _us(row[i_date]), exp,
        )

    return build


def _common_conditions(light, cand, rules: KindRules, keys: Sequence[str]) -> list:
    conditions = [cand.c[f"k_{c}"] == light.c[f"k_{c}"] for c in keys]
    for c, limit in rules.tolerance.items():
        a, b = cand.c[f"t_{c}"], light.c[f"t_{c}"]
        conditions.append(or_(and_(a.is_(None), b.is_(None)), func.abs(a - b) <= limit + 1e-9))
    conditions += [
        cand.c.id != light.c.id,
        or_(cand.c.valid_from_us.is_(None), light.c.us >= cand.c.valid_from_us),
        or_(cand.c.valid_until_us.is_(None), light.c.us < cand.c.valid_until_us),
    ]
    return conditions


def _nearest_query(light, cand, rules: KindRules, keys: Sequence[str], *, after: bool):
    window_s = int(rules.max_age_days * SECONDS_PER_DAY)
    conditions = _common_conditions(light, cand, rules, keys)
    if rules.kind == "dark":
        conditions.append(cand.c.k_exposure == light.c.k_exposure)
    else:
        conditions.append(cand.c.k_exposure == 0)
    if after:
        conditions += [cand.c.t > light.c.t, cand.c.t <= light.c.t + window_s]
    else:
        conditions += [cand.c.t <= light.c.t, cand.c.t >= light.c.t - window_s]
    order = (cand.c.t.asc() if after else cand.c.t.desc(), cand.c.neg_n_combined, cand.c.neg_created_us,
             cand.c.neg_id)
    return select(cand.c.id).where(*conditions).order_by(*order).limit(1).correlate(light).scalar_subquery()


def _scaled_query(light, cand, rules: KindRules, keys: Sequence[str], light_ids: Sequence[int]):
    """Darks: the nearest longer bias-subtracted master, by a window over the candidates."""
    window_s = int(rules.max_age_days * SECONDS_PER_DAY)
    conditions = _common_conditions(light, cand, rules, keys) + [
        cand.c.bias_subtracted, cand.c.exposure_time_s > light.c.exposure_time_s,
        cand.c.t >= light.c.t - window_s, cand.c.t <= light.c.t + window_s,
    ]
    rank = func.row_number().over(
        partition_by=light.c.id,
        order_by=(cand.c.exposure_time_s, func.abs(cand.c.t - light.c.t), cand.c.neg_n_combined,
                  cand.c.neg_created_us, cand.c.neg_id),
    )
    ranked = (
        select(light.c.id.label("frame_id"), cand.c.id.label("master_id"),
               (light.c.exposure_time_s / cand.c.exposure_time_s).label("scale"), rank.label("rn"))
        .select_from(light.join(cand, and_(*conditions)))
        .where(light.c.id.in_(light_ids))
        .subquery()
    )
    return select(ranked.c.frame_id, ranked.c.master_id, ranked.c.scale).where(ranked.c.rn == 1)


def _bulk_kind(session: Session, light, kind: str, matching: MatchingRules, instrument_ids: set,
               library: list, light_t: dict[int, int], out: dict[tuple[int, str], Selection]) -> None:
    """The set-based selection of one kind for the frames already loaded into ``light``."""
    rules = matching[kind]
    uid = uuid.uuid4().hex[:12]
    metadata, cand, keys = _candidate_table(rules, uid)
    build = _key_function(keys, list(rules.tolerance), rules.exposure_tolerance_s if kind == "dark" else None)
    n = len(_FRAME_COLUMNS)
    cand_rows = []
    for row in library:
        if "instrument" in rules.exact and row[1] not in instrument_ids:
            continue
        n_combined, created_at, valid_from, valid_until, bias_subtracted = row[n:n + 5]
        cand_rows.append((*build(row), -(n_combined or 0), -(_us(created_at) or 0), -row[0], _us(valid_from),
                          _us(valid_until), bool(bias_subtracted)))
    if not cand_rows:
        return
    info = {row[0]: (row[-9], row[-6], row[-5]) for row in cand_rows}  # id -> (t, -n_combined, -created_us)
    connection = session.connection()
    cand.create(connection)  # a TEMPORARY scratch table of this query, not schema
    try:
        insert_rows(connection, cand, cand_rows)
        connection.execute(text(f"ANALYZE {cand.name}"))  # statistics for the planner (both backends)
        before = _nearest_query(light, cand, rules, keys, after=False)
        after = _nearest_query(light, cand, rules, keys, after=True)
        with index_seeks(connection):
            nearest = connection.execute(select(light.c.id, before, after)).all()
        version = matching.version
        for fid, b, a in nearest:
            if b is None and a is None:
                continue
            if b is None or a is None:
                mid = a if b is None else b
            else:
                t = light_t[fid]
                tb, nb, cb = info[b]
                ta, na, ca = info[a]
                mid = b if (t - tb, nb, cb, -b) <= (ta - t, na, ca, -a) else a
            out[(fid, kind)] = Selection(fid, kind, "exact", mid, None, [(mid, 1.0)], version, [],
                                         f"{kind}: master {mid} (exact)")
        if kind == "dark" and rules.scale:
            left = [fid for fid in light_t if (fid, kind) not in out]
            for chunk in chunked(left):
                for fid, mid, scale in connection.execute(_scaled_query(light, cand, rules, keys, chunk)):
                    out[(fid, kind)] = Selection(fid, kind, "scaled", mid, float(scale), [(mid, float(scale))],
                                                 version, [], f"{kind}: master {mid} (scaled)")
    finally:
        metadata.drop_all(connection)


def select_masters(
    session: Session,
    frame_ids: Iterable[int],
    kinds: Sequence[str] = CALIBRATION_KINDS,
    *,
    rules: RuleBook | MatchingRules | None = None,
    fallback: bool = True,
    batch_size: int = 5000,
) -> dict[tuple[int, str], Selection]:
    """Select masters of ``kinds`` for many frames with a few set-based queries.

    Per instrument and kind: the frames and the candidate masters are loaded into temporary
    tables keyed by the exact columns; one statement finds, for every frame at once, the
    nearest valid candidate before and after it (index seeks on the candidates' keys and
    ``date_obs_s``); a second one, a window over the candidates, finds the nearest longer
    bias-subtracted dark for the frames without an exact-exposure one. The ordering is the one
    of :func:`select_master`. Frames left without a master are judged one by one
    (:func:`explain_selection`) when ``fallback``, which finds interpolated darks and names the
    rule that removed the last candidates.

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
        The frames to calibrate.
    kinds : sequence of {'bias', 'dark', 'flat'}
    rules : RuleBook or MatchingRules, optional
    fallback : bool
        Judge the frames the queries leave without a master one by one (default True).
    batch_size : int
        Frame ids per ``IN (...)`` list when loading the frames.

    Returns
    -------
    dict of (frame_id, kind) to Selection
        The set-based selections carry no candidate verdicts (``candidates == []``).
    """
    ids = list(dict.fromkeys(frame_ids))
    rules = rules if rules is not None else default_rulebook()
    book = rules if isinstance(rules, RuleBook) else None
    frames = Frame.__table__
    columns = [frames.c[c] for c in _FRAME_COLUMNS]
    by_instrument: dict[int | None, list] = {}
    # the frames: their ids go to a temporary table joined to frames (no long IN lists)
    metadata = MetaData()
    wanted = Table(f"sel_ids_{uuid.uuid4().hex[:12]}", metadata, Column("id", Integer, primary_key=True),
                   prefixes=["TEMPORARY"])
    connection = session.connection()
    wanted.create(connection)  # a TEMPORARY scratch table of this query, not schema
    try:
        insert_rows(connection, wanted, [(i,) for i in ids])
        connection.execute(text(f"ANALYZE {wanted.name}"))
        with index_seeks(connection):
            rows = connection.execute(select(*columns).join(wanted, wanted.c.id == frames.c.id)).all()
        for row in rows:
            by_instrument.setdefault(row[1], []).append(tuple(row))
    finally:
        metadata.drop_all(connection)
    # the library of every kind asked for, in one statement
    libraries: dict[str, list] = {kind: [] for kind in kinds}
    with index_seeks(connection):
        library = connection.execute(
            select(*columns, Master.n_combined, Master.created_at, Master.valid_from, Master.valid_until,
                   Master.bias_subtracted, Master.kind)
            .join(Master, Master.frame_id == frames.c.id)
            .where(Master.kind.in_(list(kinds)), ~Master.is_bad, frames.c.date_obs_s.is_not(None))
        ).all()
    for row in library:
        libraries[row[-1]].append(tuple(row))
    names = dict(session.execute(select(Instrument.id, Instrument.name)).all())
    # instruments that share their rules are selected together (the instrument is a key column)
    by_rules: dict[int, tuple[MatchingRules, set, list]] = {}
    for iid, rows in by_instrument.items():
        matching = rules_for(book or rules, names.get(iid))
        entry = by_rules.setdefault(id(matching), (matching, set(), []))
        entry[1].add(iid)
        entry[2].extend(rows)
    out: dict[tuple[int, str], Selection] = {}
    i_t = _FRAME_COLUMNS.index("date_obs_s")
    for matching, instrument_ids, lights in by_rules.values():
        # the frames' keys, for every kind at once: the union of the kinds' exact and tolerance columns
        keys = list(dict.fromkeys(c for kind in kinds for c in matching[kind].exact))
        tolerance = list(dict.fromkeys(c for kind in kinds for c in matching[kind].tolerance))
        build = _key_function(keys, tolerance, matching["dark"].exposure_tolerance_s)
        light_rows = [build(row) for row in lights if row[i_t] is not None]
        light_t = {row[0]: row[i_t] for row in lights if row[i_t] is not None}
        light_metadata, light = _key_table(f"sel_light_{uuid.uuid4().hex[:12]}", keys, tolerance)
        if light_rows:
            light.create(connection)  # a TEMPORARY scratch table of this query, not schema
            try:
                insert_rows(connection, light, light_rows)
                connection.execute(text(f"ANALYZE {light.name}"))
                for kind in kinds:
                    _bulk_kind(session, light, kind, matching, instrument_ids, libraries[kind], light_t, out)
            finally:
                light_metadata.drop_all(connection)
        for kind in kinds:
            if fallback:
                left = [row[0] for row in lights if (row[0], kind) not in out]
                if left:
                    library = masters_of(session, kind)
                    for batch in chunked(left, batch_size):
                        for frame in session.scalars(select(Frame).where(Frame.id.in_(batch))):
                            out[(frame.id, kind)] = explain_selection(session, frame, kind, rules=matching, library=library)
    return out


def missing_calibrations(
    session: Session,
    frame_ids: Iterable[int],
    kinds: Sequence[str] = CALIBRATION_KINDS,
    *,
    rules: RuleBook | MatchingRules | None = None,
) -> pd.DataFrame:
    """The frames no master can calibrate, grouped by the calibration set that would be needed.

    The set is what the rules would require of a master: the kind, the instrument and the
    other ``exact`` columns, the ``tolerance`` columns (set-point temperature), and for darks
    the exposure time (filter_name is among the exact columns of flats). One row per set: what
    to shoot next.

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
        The frames to calibrate (usually lights).
    kinds : sequence of {'bias', 'dark', 'flat'}
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``.

    Returns
    -------
    DataFrame
        Columns: kind, instrument, the needed columns of the rules, ``lights`` (count),
        ``first_night``, ``last_night``, ``why`` (the rule that removed the last candidates for
        one of them), ``frame_ids`` (up to 20).
    """
    rules = rules if rules is not None else default_rulebook()
    selections = select_masters(session, frame_ids, kinds, rules=rules, fallback=True)
    missing = [(fid, kind, sel) for (fid, kind), sel in selections.items() if not sel.found]
    if not missing:
        import pandas as pd  # imported on use: a slow import

        return pd.DataFrame(columns=["kind", "instrument", "lights", "first_night", "last_night", "why", "frame_ids"])
    frames = {f.id: f for batch in chunked(sorted({m[0] for m in missing}))
              for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))}
    book = rules if isinstance(rules, RuleBook) else None
    groups: dict[tuple, dict[str, Any]] = {}
    for fid, kind, sel in missing:
        frame = frames[fid]
        name = frame.instrument.name if frame.instrument else None
        kr = rules_for(book or rules, name)[kind]
        columns = [c for c in (*kr.exact, *kr.tolerance) if c != "instrument"]
        if kind == "dark":
            columns.append("exposure_time_s")
        key = (kind, name) + tuple((c, getattr(frame, c)) for c in columns)
        group = groups.setdefault(key, {"frames": [], "nights": [], "why": sel.explanation})
        group["frames"].append(fid)
        if frame.night is not None:
            group["nights"].append(frame.night)
    rows = []
    for key, group in groups.items():
        row = {"kind": key[0], "instrument": key[1], **dict(key[2:])}
        row.update(
            lights=len(group["frames"]), first_night=min(group["nights"], default=None),
            last_night=max(group["nights"], default=None), why=group["why"],
            frame_ids=",".join(map(str, sorted(group["frames"])[:20])),
        )
        rows.append(row)
    import pandas as pd  # imported on use: a slow import

    table = pd.DataFrame(rows)
    leading = ["kind", "instrument"]
    trailing = ["lights", "first_night", "last_night", "why", "frame_ids"]
    middle = [c for c in table.columns if c not in leading + trailing]
    return table[leading + middle + trailing].sort_values(["kind", "lights"], ascending=[True, False]).reset_index(drop=True)


__all__ = [
    "CalibrationNotFoundError", "Selection", "Verdict", "explain_selection", "explain_selections",
    "interpolation_weights", "masters_of", "missing_calibrations", "record_selection", "rules_for", "select_master",
    "select_masters",
]
