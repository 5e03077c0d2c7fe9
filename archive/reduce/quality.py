"""Frame quality in the catalogue, judging: the rules applied to measured frames, overrides and
verdicts.

The pixel side is :mod:`archive.reduce.measure` (run in the executor); the rules are
:mod:`archive.calib.quality` (data in ``configs/quality/``). Here:

* :func:`judge_frames` applies the rules to the groups the frames belong to (instrument,
  target, filter and night; group limits need the whole group) and replaces their flags.
* :func:`set_override` records a person's accept or reject.
* :func:`verdicts` reads the verdict of frames: the latest override, else ``rejected`` when a
  flag of the current rules with action ``reject`` is stored, else ``accepted``. A frame never
  measured is ``accepted`` (nothing speaks against it) and says so (``unmeasured``).
* :func:`current_measurements` reads the frames' measurements of one version.

The other phases build on these: measuring frames (:mod:`archive.reduce.quality_measure`), the
tables of measurements and verdicts (:mod:`archive.reduce.quality_report`) and the verdicts of
a stack's lights (:mod:`archive.reduce.quality_stacks`).
"""

from __future__ import annotations

import getpass
from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from archive.calib.quality import METRICS, QualityRules, judge, load_quality_rules
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import instrument_names
from archive.db.models import Frame, FrameMeasurement, QualityFlag, QualityOverride
from archive.errors import ArchiveError
from archive.reduce.measure import measurement_version

#: Image types measured.
MEASURED_TYPES = ("light", "bias", "dark", "flat", "master_bias", "master_dark", "master_flat")


class QualityError(LookupError, ArchiveError):
    """A frame named for an override is not in the catalogue."""


class OverrideError(ValueError, ArchiveError):
    """An override without a reason, or with a verdict other than accept or reject."""


def current_measurements(session: Session, frame_ids: Iterable[int], version: str,
                          among: Select | None = None) -> dict[int, FrameMeasurement]:
    """frame id -> its measurement of ``version``; through ``among`` (a statement selecting
    exactly ``frame_ids``) rather than ``IN`` lists when given (see :func:`verdicts`)."""
    out: dict[int, FrameMeasurement] = {}
    frame_ids = set(frame_ids)
    for batch in ([among] if frame_ids else []) if among is not None else chunked(frame_ids):
        for m in session.scalars(select(FrameMeasurement).where(
                FrameMeasurement.frame_id.in_(batch), FrameMeasurement.version == version)):
            out[m.frame_id] = m
    return out


def _group_key(frame: Frame) -> tuple:
    return (frame.image_type, frame.instrument_id, frame.target_key, (frame.filter_name or "").lower(), frame.night)


def _judge_groups(session: Session, frame_ids: Iterable[int], rules: QualityRules
                  ) -> tuple[list, dict[int, FrameMeasurement]]:
    """The flags of the groups of ``frame_ids`` under ``rules`` (nothing written), and the
    current measurement of every frame judged."""
    version = measurement_version(rules.measure.get("version", "1"))
    frames = [f for batch in chunked(set(frame_ids)) for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))]
    keys = {_group_key(f) for f in frames if f.image_type in MEASURED_TYPES}
    members: list[tuple[Frame, FrameMeasurement]] = []
    for image_type, instrument_id, target, filter_name, night in keys:
        query = (select(Frame, FrameMeasurement).join(FrameMeasurement, FrameMeasurement.frame_id == Frame.id)
                 .where(FrameMeasurement.version == version, FrameMeasurement.status == "ok",
                        Frame.image_type == image_type,
                        func.lower(func.coalesce(Frame.filter_name, "")) == filter_name))
        for column, value in ((Frame.instrument_id, instrument_id), (Frame.target_key, target), (Frame.night, night)):
            query = query.where(column == value if value is not None else column.is_(None))
        members += [tuple(row) for row in session.execute(query)]
    # each instrument by its own limits (a group is of one instrument)
    by_instrument: dict[int | None, list[tuple[Frame, FrameMeasurement]]] = defaultdict(list)
    for f, mm in members:
        by_instrument[f.instrument_id].append((f, mm))
    names = instrument_names(session, list(by_instrument)) if rules.limits else {}
    flags = []
    for instrument_id, rows in by_instrument.items():
        flags += judge(rules.for_instrument(names.get(instrument_id)),
                       ((f.id, f.image_type, _group_key(f), {m: getattr(mm, m) for m in METRICS}) for f, mm in rows))
    return flags, {f.id: mm for f, mm in members}


def judge_frames(session: Session, frame_ids: Iterable[int], *, rules: QualityRules | None = None) -> int:
    """Judge the groups of ``frame_ids`` by the rules and replace their flags.

    A group is every frame of one image type, instrument, target, filter and night with a
    current measurement; all of its frames are judged again, since a group limit depends on
    each of them. Sets ``judged_version``. Flushes; the caller commits.

    Returns
    -------
    int
        Flags written.
    """
    rules = rules or load_quality_rules()
    flags, by_frame = _judge_groups(session, frame_ids, rules)
    for batch in chunked([mm.id for mm in by_frame.values()]):
        session.execute(delete(QualityFlag).where(QualityFlag.measurement_id.in_(batch)))
    now = utcnow()
    for flag in flags:
        session.add(QualityFlag(frame_id=flag.frame_id, measurement_id=by_frame[flag.frame_id].id, rule=flag.rule,
                                rule_version=rules.version, metric=flag.metric, value=flag.value,
                                limit_value=flag.limit, bound=flag.bound, scope=flag.scope, action=flag.action,
                                created_at=now))
    for mm in by_frame.values():
        mm.judged_version = rules.version
    session.flush()
    return len(flags)


def _flag_text(rule: str, metric: str, value: float, bound: str, limit: float, scope: str) -> str:
    return (f"{rule}: {metric} {value:.4g} {'<' if bound == 'min' else '>'} {limit:.4g}"
            + (" (group)" if scope == "group" else ""))


def set_override(session: Session, frame_ids: Sequence[int], verdict: str, reason: str,
                 user: str | None = None) -> list[int]:
    """Record a person's verdict (``accept`` or ``reject``) on frames; it wins over the rules.

    Raises
    ------
    OverrideError
        ``verdict`` is not accept or reject, or ``reason`` is empty.
    QualityError
        A frame id is not in the catalogue.
    """
    if verdict not in ("accept", "reject"):
        raise OverrideError(f"verdict must be 'accept' or 'reject', not {verdict!r}")
    if not reason or not reason.strip():
        raise OverrideError("an override needs a reason")
    known = {i for batch in chunked(set(frame_ids)) for i in session.scalars(select(Frame.id).where(Frame.id.in_(batch)))}
    missing = sorted(set(frame_ids) - known)
    if missing:
        raise QualityError(f"no frame #{', #'.join(map(str, missing))} in the catalogue")
    if user is None:
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name on this system
            user = None
    now = utcnow()
    for frame_id in frame_ids:
        session.add(QualityOverride(frame_id=frame_id, verdict=verdict, reason=reason.strip(), by_user=user,
                                    created_at=now))
    session.flush()
    return list(frame_ids)


def verdicts(session: Session, frame_ids: Iterable[int], *, rules: QualityRules | None = None,
             among: Select | None = None) -> dict[int, dict]:
    """The verdict of each frame (nothing is written).

    Parameters
    ----------
    session : Session
    frame_ids : iterable of int
    rules : QualityRules, optional
    among : Select, optional
        A statement selecting exactly ``frame_ids`` (one column of frame ids): the
        measurements, flags and overrides are then looked up through it, in one statement
        each, instead of through ``IN`` lists of the ids (thousands of bound values that
        PostgreSQL plans slowly).

    Returns
    -------
    dict
        frame id -> ``{'verdict': 'accepted'|'rejected', 'by': 'override'|'rules'|'unmeasured',
        'reasons': [str], 'flags': [str], 'other_version': str or None}``. The latest override
        wins; else a flag of the current rules with action ``reject`` rejects. Flags are the
        stored ones when the frame was judged under the current rules, else computed here from
        its group (:func:`judge_frames` stores them). ``other_version`` names a measurement of
        another version when the frame has none of the current one.
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    ids = sorted(set(frame_ids))
    out = {i: {"verdict": "accepted", "by": "unmeasured", "reasons": [], "flags": [], "other_version": None}
           for i in ids}
    unjudged: list[int] = []
    if among is not None:
        batches = [among] if ids else []
    else:
        batches = list(chunked(ids))
    for batch in batches:
        for m in session.scalars(select(FrameMeasurement).where(FrameMeasurement.frame_id.in_(batch))):
            if m.version != version:
                if out[m.frame_id]["by"] == "unmeasured":
                    out[m.frame_id]["other_version"] = m.version
                continue
            if m.status == "ok":
                out[m.frame_id]["by"] = "rules"
                out[m.frame_id]["other_version"] = None
                if m.judged_version != rules.version:
                    unjudged.append(m.frame_id)
        rows = session.execute(
            select(QualityFlag).join(FrameMeasurement, FrameMeasurement.id == QualityFlag.measurement_id)
            .where(QualityFlag.frame_id.in_(batch), FrameMeasurement.version == version,
                   QualityFlag.rule_version == rules.version).order_by(QualityFlag.id)).scalars()
        found = [(f.frame_id, f.rule, f.metric, f.value, f.bound, f.limit_value, f.scope, f.action) for f in rows]
        if unjudged:
            flags, _ = _judge_groups(session, unjudged, rules)
            skip = set(unjudged)
            found = [row for row in found if row[0] not in skip]
            found += [(f.frame_id, f.rule, f.metric, f.value, f.bound, f.limit, f.scope, f.action) for f in flags
                      if f.frame_id in skip]
            unjudged = []
        for frame_id, rule, metric, value, bound, limit, scope, action in found:
            text = _flag_text(rule, metric, value, bound, limit, scope)
            out[frame_id]["flags"].append(text)
            if action == "reject":
                out[frame_id]["verdict"] = "rejected"
                out[frame_id]["reasons"].append(text)
        latest = (select(QualityOverride.frame_id, func.max(QualityOverride.id).label("oid"))
                  .where(QualityOverride.frame_id.in_(batch)).group_by(QualityOverride.frame_id).subquery())
        for override in session.scalars(select(QualityOverride).join(latest, latest.c.oid == QualityOverride.id)):
            state = out[override.frame_id]
            state["verdict"] = "accepted" if override.verdict == "accept" else "rejected"
            state["by"] = "override"
            state["reasons"] = [f"{override.verdict}ed by {override.by_user or 'a person'}: {override.reason}"]
    return out
