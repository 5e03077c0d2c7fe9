"""What to shoot next: the frames no master can calibrate, grouped by the calibration they need."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import MatchingRules, RuleBook, default_rulebook
from archive.calib.select_sql import select_masters
from archive.calib.selection import rules_for
from archive.db.bulk import chunked
from archive.db.models import CALIBRATION_KINDS, Frame

if TYPE_CHECKING:
    import pandas as pd


def missing_calibrations(
    session: Session,
    frame_ids: Iterable[int],
    kinds: Sequence[str] = CALIBRATION_KINDS,
    *,
    rules: RuleBook | MatchingRules | None = None,
    needs: Mapping[int, Sequence[str]] | None = None,
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
    needs : mapping of int to sequence of str, optional
        Per frame, the kinds it needs (among ``kinds``; a frame not in it needs ``kinds``), as
        :func:`archive.calib.required.required_kinds` gives them: frames of instruments that
        require different calibrations are judged in one pass.

    Returns
    -------
    DataFrame
        Columns: kind, instrument, the needed columns of the rules, ``lights`` (count),
        ``first_night``, ``last_night``, ``why`` (the rule that removed the last candidates for
        one of them), ``frame_ids`` (up to 20).
    """
    rules = rules if rules is not None else default_rulebook()
    selections = select_masters(session, frame_ids, kinds, rules=rules, fallback=True, needs=needs)
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
        name = frame.instrument.key if frame.instrument else None
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
