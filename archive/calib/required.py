"""Which calibrations a light must have: the one rule that calibration and usable integration
(projects) both follow."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib.rules import MatchingRules, RuleBook, default_rulebook
from archive.calib.selection import rules_for
from archive.db.bulk import index_seeks
from archive.db.frames import instrument_names
from archive.db.models import CALIBRATION_KINDS, DARK_MODEL, MASTER_KINDS, MASTER_TYPES, Frame, Master


def kinds_in_library(session: Session, *, include_bad: bool = False,
                     instrument_ids: Iterable[int | None] | None = None) -> dict[int | None, frozenset[str]]:
    """Instrument id -> the calibration kinds of which the library holds a master.

    Masters marked bad count only with ``include_bad``: the only master flat of an instrument
    marked bad leaves the instrument without flats, so its lights are calibrated again
    without one (the caller says so) rather than not at all.

    With ``instrument_ids``, only those instruments are looked at, each kind by an index seek
    that stops at the first master found (one statement), not by reading the whole library."""
    out: dict[int | None, set[str]] = defaultdict(set)
    if instrument_ids is not None:
        pairs = [(iid, kind) for iid in sorted({i for i in instrument_ids if i is not None}) for kind in MASTER_KINDS]
        if not pairs:
            return {}
        tests = []
        for iid, kind in pairs:
            query = (select(Master.frame_id).join(Frame, Frame.id == Master.frame_id)
                     .where(Frame.image_type == f"master_{kind}", Frame.instrument_id == iid, Master.kind == kind))
            if not include_bad:
                query = query.where(~Master.is_bad)
            tests.append(query.exists())
        with index_seeks(session.connection()):
            found = session.execute(select(*tests)).one()
        for (iid, kind), present in zip(pairs, found):
            if present:
                out[iid].add("dark" if kind == DARK_MODEL else kind)  # a dark ladder's model is its dark
        return {k: frozenset(v) for k, v in out.items()}
    # a master's frame is of a master type: the condition lets the frames' image_type index
    # find the few master frames instead of joining every frame (PostgreSQL: 200 ms -> 45 ms)
    query = (select(Frame.instrument_id, Master.kind).join(Frame, Frame.id == Master.frame_id)
             .where(Frame.image_type.in_(MASTER_TYPES)).distinct())
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
