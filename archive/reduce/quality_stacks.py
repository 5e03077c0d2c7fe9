"""Frame quality, stacking: the verdicts of the lights a stack is made from.

* :func:`lights_of` traces calibrated and registered frames back to their raw lights;
* :func:`stack_exclusions` splits a stack's registered frames by their lights' verdicts
  (:mod:`archive.reduce.stacking`);
* :func:`stale_stacks` finds the stacks whose membership the current verdicts would change
  (:mod:`archive.reduce.stale`).

The verdicts are :func:`archive.reduce.quality.verdicts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from archive.calib.quality import QualityRules, load_quality_rules
from archive.db.bulk import chunked
from archive.db.models import Frame, Reduction, ReductionInput
from archive.reduce.measure import measurement_version
from archive.reduce.quality import current_measurements, judge_frames, verdicts


def lights_of(session: Session, product_ids: Iterable[int]) -> dict[int, int]:
    """registered or calibrated frame id -> the raw light it was made from (through the
    calibrate and register reductions' inputs)."""
    out: dict[int, int] = {}
    cal_in = aliased(ReductionInput)
    calibrated = aliased(Frame)
    light_in = aliased(ReductionInput)
    for batch in chunked(set(product_ids)):
        # calibrated frames: their calibration's light
        out.update(session.execute(
            select(Frame.id, light_in.frame_id).join(light_in, and_(light_in.reduction_id == Frame.reduction_id,
                                                                    light_in.role == "light"))
            .where(Frame.id.in_(batch))).all())
        # registered frames: their registration's input, then that calibration's light
        out.update(session.execute(
            select(Frame.id, light_in.frame_id)
            .join(cal_in, and_(cal_in.reduction_id == Frame.reduction_id, cal_in.role == "input"))
            .join(calibrated, calibrated.id == cal_in.frame_id)
            .join(light_in, and_(light_in.reduction_id == calibrated.reduction_id, light_in.role == "light"))
            .where(Frame.id.in_(batch))).all())
    return out


def stack_exclusions(session: Session, registered_ids: Sequence[int], *,
                     rules: QualityRules | None = None) -> tuple[list[int], dict[int, str], dict[int, float | None]]:
    """Split a stack's registered frames by the verdicts of their lights.

    The lights' groups are judged first (flags written; the caller commits).

    Returns
    -------
    kept : list of int
        Registered frame ids whose light is accepted (or unmeasured), in the given order.
    rejected : dict
        light id -> reason, of the registered frames left out.
    weights : dict
        registered id -> the signal weight of its light's measurement (None unmeasured).
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    lights = lights_of(session, registered_ids)
    judge_frames(session, [lights[r] for r in registered_ids if r in lights], rules=rules)
    states = verdicts(session, lights.values(), rules=rules)
    measured = current_measurements(session, lights.values(), version)
    kept, rejected, weights = [], {}, {}
    for rid in registered_ids:
        light = lights.get(rid)
        if light is not None and states[light]["verdict"] == "rejected":
            rejected[light] = "; ".join(states[light]["reasons"])
            continue
        kept.append(rid)
        weights[rid] = measured[light].weight if light in measured else None
    return kept, rejected, weights


@dataclass
class QualityStale:
    """A stack whose membership would change under the current verdicts.

    Attributes
    ----------
    frame_id : int
        The stacked frame.
    light_id : int
        A light of its group (reducing it again makes the group's stack again).
    reasons : list of str
    """

    frame_id: int
    light_id: int
    reasons: list[str]


def stale_stacks(session: Session, *, rules: QualityRules | None = None) -> list[QualityStale]:
    """The newest stack of each group (``parameters['group_key']``) whose inputs' lights are now
    rejected, or that left out lights now accepted (an override, a rules change, a new
    measurement), or whose lights were measured under another version than the current one.

    Returns
    -------
    list of QualityStale
        By stacked frame id.
    """
    rules = rules or load_quality_rules()
    latest: dict[str, tuple[int, dict, int]] = {}
    rows = session.execute(select(Reduction.id, Reduction.parameters, Frame.id)
                           .join(Frame, Frame.reduction_id == Reduction.id)
                           .where(Reduction.step == "stack", Reduction.status == "done").order_by(Reduction.id))
    for rid, params, frame_id in rows:
        key = (params or {}).get("group_key")
        if key:
            latest[key] = (rid, params or {}, frame_id)
    out: list[QualityStale] = []
    for rid, params, frame_id in latest.values():
        inputs = list(session.scalars(select(ReductionInput.frame_id).where(
            ReductionInput.reduction_id == rid, ReductionInput.role == "input")))
        lights = sorted(set(lights_of(session, inputs).values()))
        left_out = sorted(int(k) for k in params.get("rejected", {}))
        states = verdicts(session, lights + left_out, rules=rules)
        reasons = []
        for light in lights:
            state = states[light]
            if state["verdict"] == "rejected":
                reasons.append(f"light #{light} now rejected ({'; '.join(state['reasons'])})")
            elif state["other_version"]:
                reasons.append(f"light #{light} measured under version {state['other_version']}, not "
                               f"{measurement_version(rules.measure.get('version', '1'))}: measure again")
        for light in left_out:
            if states[light]["verdict"] == "accepted":
                why = "; ".join(states[light]["reasons"]) or "no rule rejects it now"
                reasons.append(f"light #{light}, left out, now accepted ({why})")
        if reasons and (lights or left_out):
            out.append(QualityStale(frame_id, (lights or left_out)[0], reasons))
    return sorted(out, key=lambda s: s.frame_id)
