"""Choosing a master for one frame by the matching rules, every candidate judged and explained.

:func:`select_master` (and :func:`explain_selection`, which does not raise) evaluates every rule
of :mod:`archive.calib.selection` on every candidate in Python and keeps the verdicts, so the
decision can be explained (``--explain``), including the rule that removed the last
candidates when none is left, and stored with its rejected candidates
(:func:`record_selection`). Darks that no single master serves may be interpolated
(:func:`interpolation_weights`), or served by a dark model fitted over a dark ladder
(:mod:`archive.calib.ladder`, method ``model``). Many frames at once: :func:`archive.calib.select_sql.select_masters`,
which gives the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import KindRules, MatchingRules, RuleBook, default_rulebook
from archive.calib.selection import SECONDS_PER_DAY, Selection, Verdict, exposure_key, match_value, rules_for
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive import keywords as kw
from archive.db.models import (
    BADPIX,
    CALIBRATION_KINDS,
    DARK_MODEL,
    LIBRARY_KINDS,
    CalibrationSelection,
    Frame,
    Master,
    ReductionInput,
)
from archive.errors import CalibrationNotFoundError
from archive.ingest.cards import header_from_text
from archive.ingest.timing import epoch_microseconds


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b


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
        -(epoch_microseconds(master.created_at) or 0), -mframe.id,
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
    mean = sum(exposures) / n if n else 0.0
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
        order = (verdict.delta_s, -(master.n_combined or 0), -(epoch_microseconds(master.created_at) or 0), -mframe.id)
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


def _model_range(mframe: Frame) -> tuple[float | None, float | None]:
    """The exposure range (s) a dark model was fitted over, from its header's
    :data:`archive.keywords.DARK_MODEL_TMIN` / :data:`archive.keywords.DARK_MODEL_TMAX`
    (None when absent or not a number)."""
    key = (mframe.id, mframe.sha256)
    if key not in _MODEL_RANGES:
        header = header_from_text(mframe.header or "")
        values = []
        for name in (kw.DARK_MODEL_TMIN, kw.DARK_MODEL_TMAX):
            try:
                values.append(float(header[name]))
            except (KeyError, TypeError, ValueError):
                values.append(None)
        _MODEL_RANGES[key] = (values[0], values[1])
    return _MODEL_RANGES[key]


#: (frame id, sha256) -> a dark model's exposure range: read once per process.
_MODEL_RANGES: dict[tuple[int, str], tuple[float | None, float | None]] = {}


def _judge_models(frame: Frame, rules: KindRules, models: list[tuple[Master, Frame]],
                  ) -> tuple[tuple[Master, Frame] | None, list[Verdict]]:
    """Dark models (:mod:`archive.calib.ladder`) for ``frame`` when no master dark serves it.

    A model must pass every dark rule but the exposure one (exact keys, tolerance, age, bad
    flag, validity), ``ladder`` must be on, and the frame's exposure must lie within the
    model's range (``exposure_tolerance_s`` either side; rule ``exposure_range``). The nearest
    in time wins (then more frames, the most recently built, the larger id). Returns the chosen
    (Master, Frame), or None, and every model's verdict (method ``model`` for the survivors)."""
    relaxed = replace(rules, kind="bias")  # every dark rule but the exposure one
    judged = []
    t = frame.exposure_time_s
    for master, mframe in models:
        if mframe.id == frame.id:
            continue
        verdict = _judge(frame, master, mframe, relaxed)
        if verdict.rejected_by is None:
            tmin, tmax = _model_range(mframe)
            tol = rules.exposure_tolerance_s
            if not rules.ladder:
                verdict.rejected_by, verdict.reason = "ladder", "dark models are off (ladder = false)"
            elif t is None or tmin is None or tmax is None or not tmin - tol <= t <= tmax + tol:
                verdict.rejected_by = "exposure_range"
                verdict.reason = f"exposure {t} s outside the dark model's range {tmin}-{tmax} s"
        verdict.method = "model" if verdict.rejected_by is None else None
        judged.append((master, mframe, verdict))
    survivors = sorted((p for p in judged if p[2].rejected_by is None), key=lambda p: p[2].sort_key)
    for rank, (_, _, verdict) in enumerate(survivors, 1):
        verdict.rank = rank
    chosen = (survivors[0][0], survivors[0][1]) if survivors else None
    return chosen, [v for _, _, v in judged]


def _nearest_shorter(frame: Frame, pairs: list[tuple[Master, Frame, Verdict]],
                     rules: KindRules) -> tuple[Master, Frame, Verdict] | None:
    """``scale_up``: of the bias-subtracted darks rejected only for their exposure, the longest
    one shorter than the frame's exposure, then the nearest in time (the last resort of
    :func:`explain_selection`)."""
    t = frame.exposure_time_s
    if not rules.scale_up or t is None:
        return None
    shorter = [p for p in pairs if p[0].bias_subtracted and p[1].exposure_time_s and p[1].exposure_time_s < t]
    if not shorter:
        return None
    return min(shorter, key=lambda p: (-p[1].exposure_time_s, p[2].delta_s, -(p[0].n_combined or 0), -p[1].id))


def made_from_bad(session: Session, frame_ids: Iterable[int]) -> dict[int, list[int]]:
    """Products among ``frame_ids`` made from a master now marked bad: product id -> those masters.

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
        Products (a bad-pixel mask: its master darks and flats).

    Returns
    -------
    dict of int to list of int
    """
    out: dict[int, list[int]] = {}
    for batch in chunked(list(dict.fromkeys(frame_ids))):
        rows = session.execute(
            select(Frame.id, Master.frame_id)
            .join(ReductionInput, ReductionInput.reduction_id == Frame.reduction_id)
            .join(Master, Master.frame_id == ReductionInput.frame_id)
            .where(Frame.id.in_(batch), Master.is_bad).order_by(Frame.id, Master.frame_id)
        )
        for product_id, master_id in rows:
            out.setdefault(product_id, []).append(master_id)
    return out


def masters_of(session: Session, kind: str) -> list[tuple[Master, Frame]]:
    """The library of one calibration kind: every (Master, Frame) pair, bad ones included
    (selection rejects them with a reason). Load it once to judge many frames."""
    rows = session.execute(
        select(Master, Frame).join(Frame, Frame.id == Master.frame_id).where(Master.kind == kind).order_by(Frame.id)
    )
    return [(master, frame) for master, frame in rows]


def explain_selection(
    session: Session, frame: Frame, kind: str, *, rules: RuleBook | MatchingRules | None = None,
    library: list[tuple[Master, Frame]] | None = None, models: list[tuple[Master, Frame]] | None = None,
) -> Selection:
    """Judge every master of ``kind`` for ``frame`` and choose one, keeping every verdict.

    Parameters
    ----------
    session : Session
    frame : Frame
        The frame to calibrate (usually a light; a raw flat for the dark of a master flat).
    kind : {'bias', 'dark', 'flat', 'badpix'}
        ``badpix``: the bad-pixel mask (rules without a ``[badpix]`` table select none; a mask
        made from a master since marked bad is rejected with rule ``is_bad``).
    rules : RuleBook or MatchingRules, optional
        Default: the bundled ``configs/matching``; a rule book gives the frame's instrument's rules.
    library : list of (Master, Frame), optional
        The masters of ``kind``, when the caller has already loaded them (judging many frames).
    models : list of (Master, Frame), optional
        Darks: the dark models (``masters_of(session, 'dark_model')``), likewise.

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
    if kind not in LIBRARY_KINDS:
        raise ValueError(f"unknown calibration kind {kind!r}; choose from {LIBRARY_KINDS}")
    matching = rules_for(rules, frame.instrument.key if frame.instrument else None)
    if kind == BADPIX and BADPIX not in matching.kinds:
        return Selection(frame.id, kind, "none", None, None, [], matching.version, [],
                         "no [badpix] table in the matching rules: no bad-pixel mask")
    kind_rules = matching[kind]
    candidates = library if library is not None else masters_of(session, kind)
    judged = [(m, f, _judge(frame, m, f, kind_rules)) for m, f in candidates if f.id != frame.id]
    if kind == BADPIX:  # a mask made from a master marked bad is not selected
        spoiled = made_from_bad(session, [v.master_id for _, _, v in judged if v.rejected_by is None])
        for _, _, verdict in judged:
            if verdict.master_id in spoiled:
                verdict.rejected_by = "is_bad"
                verdict.reason = f"made from master #{', #'.join(map(str, spoiled[verdict.master_id]))} marked bad"
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
        chosen, model_verdicts = _judge_models(frame, kind_rules, models if models is not None else
                                               masters_of(session, DARK_MODEL))
        verdicts = verdicts + model_verdicts
        if chosen is not None:
            t, (tmin, tmax) = frame.exposure_time_s, _model_range(chosen[1])
            return Selection(
                frame.id, kind, "model", chosen[1].id, None, [(chosen[1].id, t)], matching.version, verdicts,
                f"dark: dark model {chosen[1].id} (intercept + slope * t fitted over a dark ladder of "
                f"{tmin:g}-{tmax:g} s) evaluated at {t:g} s: no exact, longer or interpolated master dark",
                {"model": "dark = intercept + slope * t", "range_s": [tmin, tmax], "t_s": t},
            )
        shorter = _nearest_shorter(frame, exposure_only, kind_rules)
        if shorter is not None:
            master_id = shorter[1].id
            scale = frame.exposure_time_s / shorter[1].exposure_time_s
            shorter[2].method = "scaled"
            return Selection(
                frame.id, kind, "scaled", master_id, scale, [(master_id, scale)], matching.version, verdicts,
                f"dark: master {master_id} (scaled up, scale {scale:.4g}: no exact, longer or interpolated dark)",
            )
    return Selection(frame.id, kind, "none", None, None, [], matching.version, verdicts, _why_none(kind, verdicts, kind_rules))


def explain_selections(
    session: Session, frame_ids: Iterable[int], kinds: Sequence[str] = CALIBRATION_KINDS, *,
    rules: RuleBook | MatchingRules | None = None,
) -> dict[tuple[int, str], Selection]:
    """:func:`explain_selection` for many frames, every candidate of every kind judged and kept.

    Slower than :func:`archive.calib.select_sql.select_masters` (every frame against every master of the kind, in
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
    models = masters_of(session, DARK_MODEL) if "dark" in kinds else None
    out: dict[tuple[int, str], Selection] = {}
    for batch in chunked(list(dict.fromkeys(frame_ids))):
        for frame in session.scalars(select(Frame).where(Frame.id.in_(batch)).order_by(Frame.date_obs_s, Frame.id)):
            for kind in kinds:
                out[(frame.id, kind)] = explain_selection(session, frame, kind, rules=rules, library=libraries[kind],
                                                          models=models)
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
    order += ["exposure", "max_age_days", "is_bad", "validity", "ladder", "exposure_range"]
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
    masters of two or more exposures (astro_reduce's method); else, when ``ladder`` allows, a
    dark model (:mod:`archive.calib.ladder`) whose exposure range holds the frame's, evaluated
    at its exposure; else, when ``scale_up`` allows, the nearest shorter one. The nearest in time
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
