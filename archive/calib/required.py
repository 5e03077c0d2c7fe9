"""Which calibrations a light must have: the one rule that calibration and usable integration
(projects) both follow."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import MatchingRules
from archive.db.models import CALIBRATION_KINDS, Frame, Master


def kinds_in_library(session: Session, *, include_bad: bool = False) -> dict[int | None, frozenset[str]]:
    """Instrument id -> the calibration kinds of which the library holds a master.

    Masters marked bad count only with ``include_bad``: the only master flat of an instrument
    marked bad leaves the instrument without flats, so its lights are calibrated again
    without one (the caller says so) rather than not at all."""
    out: dict[int | None, set[str]] = defaultdict(set)
    query = select(Frame.instrument_id, Master.kind).join(Frame, Frame.id == Master.frame_id).distinct()
    if not include_bad:
        query = query.where(~Master.is_bad)
    rows = session.execute(query)
    for instrument_id, kind in rows:
        out[instrument_id].add(kind)
    return {k: frozenset(v) for k, v in out.items()}


def required_kinds(rules: MatchingRules, instrument_id: int | None,
                   library: dict[int | None, frozenset[str]]) -> tuple[str, ...]:
    """The calibration kinds a light of ``instrument_id`` must have.

    Parameters
    ----------
    rules : MatchingRules
        The instrument's rules; ``required`` is a list of kinds, or None for "available".
    instrument_id : int or None
    library : dict
        :func:`kinds_in_library`.

    Returns
    -------
    tuple of str
        In the order bias, dark, flat. "available" gives the kinds of which the library holds a
        master (not marked bad) of this instrument: a CCD that never took darks needs none, a smart telescope
        without calibration frames needs nothing.
    """
    if rules.required is not None:
        return rules.required
    have = library.get(instrument_id, frozenset())
    return tuple(k for k in CALIBRATION_KINDS if k in have)
