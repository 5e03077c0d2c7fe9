"""Stale products: those whose inputs would now be chosen differently (a master marked bad,
a better master, a rule change), and products made from stale ones."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import RuleBook, default_rulebook
from archive.calib.select import explain_selection, made_from_bad, masters_of
from archive.db.models import (
    BADPIX,
    DARK_MODEL,
    LIBRARY_KINDS,
    MASTER_KINDS,
    CalibrationSelection,
    Frame,
    Master,
)
from archive.db.frames import canonical_paths
from archive.db.provenance import current_calibrated

from archive.reduce.outputs import frames_by_id


# -- stale products --------------------------------------------------------------------------------


@dataclass
class StaleProduct:
    """A product whose inputs would now be chosen differently.

    Attributes
    ----------
    frame_id : int
    path : str or None
    step : str
        calibrate, register or stack.
    light_id : int or None
        For a calibrated frame, the raw light to calibrate again.
    reasons : list of str
        Why: a master marked bad, a better master, a master now available, a rule change, or
        (for registered and stacked frames) a stale input.
    """

    frame_id: int
    path: str | None
    step: str
    light_id: int | None
    reasons: list[str]


def _recorded_masters(row: CalibrationSelection) -> set[int]:
    if row.method == "interpolated" and row.detail and row.detail.get("weights"):
        return {int(mid) for mid, _ in row.detail["weights"]}
    return {row.master_id} if row.master_id is not None else set()


def find_stale(session: Session, *, rules: RuleBook | None = None) -> list[StaleProduct]:
    """Products whose inputs would now be chosen differently, and everything made from them.

    For the current calibrated frame of every light, the masters are selected again by the
    current rules (:func:`archive.calib.select.explain_selection`) and compared with the
    selections stored with its reduction: a master since marked bad or outside its validity, a
    better master built or ingested since, a master now found where none was, a changed rule
    version. Registered and stacked frames made from a stale calibrated frame are stale too,
    and so is the newest stack of a group whose membership the quality verdicts now change
    (:func:`archive.reduce.quality_stacks.stale_stacks`: a light rejected or accepted since, by a
    rules change, a new measurement or a person's override).

    Returns
    -------
    list of StaleProduct
        Calibrated frames first (by light), then the products made from them.
    """
    current = current_calibrated(session)
    out: list[StaleProduct] = []
    stale_cal: list[int] = []
    lights = {f.id: f for f in frames_by_id(session, current)}
    libraries = {kind: masters_of(session, kind) for kind in MASTER_KINDS}
    rules = rules if rules is not None else default_rulebook()
    for light_id, (cal_id, rid) in sorted(current.items()):
        light = lights[light_id]
        recorded = {row.kind: row for row in session.scalars(
            select(CalibrationSelection).where(CalibrationSelection.reduction_id == rid))}
        reasons = []
        for kind in LIBRARY_KINDS:  # the bad-pixel mask included
            new = explain_selection(session, light, kind, rules=rules, library=libraries[kind],
                                    models=libraries[DARK_MODEL])
            old = recorded.get(kind)
            old_ids = _recorded_masters(old) if old is not None else set()
            new_ids = {mid for mid, _ in new.weights}
            bad = [m.frame_id for m in session.scalars(select(Master).where(Master.frame_id.in_(old_ids), Master.is_bad))]
            if kind == BADPIX:  # a mask made from a master marked bad (flats keep their darks)
                bad += sorted(made_from_bad(session, old_ids))
            if bad:
                reasons.append(f"{kind} master #{', #'.join(map(str, bad))} marked bad")
            if old is not None and new.rule_version != old.rule_version:
                reasons.append(f"{kind} rules changed ({old.rule_version} -> {new.rule_version})")
            if old_ids != new_ids:
                if not old_ids:
                    reasons.append(f"a {kind} master is now available (#{', #'.join(map(str, sorted(new_ids)))})")
                elif not new_ids:
                    if not bad:
                        reasons.append(f"{kind} master #{', #'.join(map(str, sorted(old_ids)))} no longer selected: "
                                       f"{new.explanation}")
                else:
                    reasons.append(f"{kind}: master #{', #'.join(map(str, sorted(new_ids)))} ({new.method}) would be "
                                   f"chosen instead of #{', #'.join(map(str, sorted(old_ids)))}")
        if reasons:
            stale_cal.append(cal_id)
            out.append(StaleProduct(cal_id, None, "calibrate", light_id, list(dict.fromkeys(reasons))))
    from archive.db.provenance import used_by

    seen = {p.frame_id for p in out}
    for cal_id in stale_cal:
        for product in used_by(session, session.get(Frame, cal_id)):
            if product["frame_id"] not in seen:
                seen.add(product["frame_id"])
                out.append(StaleProduct(product["frame_id"], product["path"], product["step"], None,
                                        [f"made from stale calibrated frame #{cal_id}"]))
    from archive.reduce.quality_stacks import stale_stacks

    for stack in stale_stacks(session):
        if stack.frame_id not in seen:  # a change of quality verdicts (rules, measurement, override)
            seen.add(stack.frame_id)
            out.append(StaleProduct(stack.frame_id, None, "stack", stack.light_id, stack.reasons))
    paths = canonical_paths(session, [p.frame_id for p in out])
    for product in out:
        product.path = product.path or paths.get(product.frame_id)
    return out
