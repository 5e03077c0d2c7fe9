"""Which calibrations a light must have: the one rule that calibration and usable integration
(projects) both follow."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import MatchingRules, RuleBook, default_rulebook
from archive.calib.selection import rules_for
from archive.db.frames import instrument_names
from archive.db.models import CALIBRATION_KINDS, DARK_MODEL, Frame, Master


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
        out[instrument_id].add("dark" if kind == DARK_MODEL else kind)  # a dark ladder's model is its dark
    return {k: frozenset(v) for k, v in out.items()}


def required_for_lights(session: Session, lights: Iterable[tuple[int, int | None]],
                        rules: RuleBook | None = None) -> dict[int, tuple[str, ...]]:
    """Light id -> the calibration kinds it must have (:func:`required_kinds` under its
    instrument's rules), for ``lights`` given as (light id, instrument id).

    The one rule of calibration (:mod:`archive.reduce.calibration`) and of usable integration
    (``archive project status``): a smart telescope needs none, a CCD without darks bias
    and flat (``required`` of configs/matching).
    """
    lights = list(lights)
    library = kinds_in_library(session)
    names = instrument_names(session, [iid for _, iid in lights])
    book = rules if rules is not None else default_rulebook()
    return {lid: required_kinds(rules_for(book, names.get(iid)), iid, library) for lid, iid in lights}


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
