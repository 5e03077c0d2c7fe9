"""Choosing masters for many frames at once: the matching rules as set-based SQL.

:func:`select_masters` runs a few statements per kind whatever the number of frames and gives
the answer of :func:`archive.calib.select.explain_selection` (the rule of
:mod:`archive.calib.selection`). The frames and the candidate masters (of every kind asked
for, in one table) go into two temporary tables. The exact-match columns of a kind are
compared in Python, as the one-frame path compares them (``None`` equals ``None``: "unknown"
matches "unknown"): each distinct tuple of a kind's exact values gets an integer code, a
candidate holds the code of its tuple and a frame one code per kind; with the exposure key of
darks, computed by the same Python as the one-frame path. An index on the candidates' (code,
exposure key, date_obs_s) lets each frame find its nearest candidate of each kind before and
after it with two index seeks (correlated subqueries ordered by date_obs_s, LIMIT 1; one
statement for every kind): the work per frame is bounded by the masters within max_age_days,
however large the catalogue; a window over the candidates finds scaled darks. The same
statements run on SQLite and PostgreSQL. Frames it cannot serve with an exact or scaled
master (an interpolated dark, or nothing) fall back to the one-frame path.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter

from sqlalchemy import (
    BigInteger, Boolean, Column, Float, Index, Integer, MetaData, Table, and_, func, or_, select,
)
from sqlalchemy.orm import Session

from archive.calib.rules import KindRules, MatchingRules, RuleBook, default_rulebook
from archive.calib.select import explain_selection, masters_of
from archive.calib.selection import SECONDS_PER_DAY, Selection, exposure_key, rules_for
from archive.db.bulk import chunked, execute_uncached, index_seeks, insert_rows
from archive.db.frames import instrument_names
from archive.db.models import CALIBRATION_KINDS, DARK_MODEL, MASTER_TYPES, Frame, Master
from archive.ingest.timing import epoch_microseconds

_FRAME_COLUMNS = ("id", "instrument_id", "date_obs", "date_obs_s", "exposure_time_s", "binning_x", "binning_y",
                  "naxis1", "naxis2", "gain", "offset", "readout_mode", "filter_name", "telescope", "set_temp_c",
                  "ccd_temp_c", "bayer_pattern")
_POSITION = {name: i for i, name in enumerate(_FRAME_COLUMNS)}
#: No candidate has this code: a frame whose exact values no candidate of the kind shares.
_NO_CODE = -1


def _key_table(name: str, codes: Sequence[str], tolerance: Sequence[str], *extra):
    """A temporary table of frames' match keys: id, the code columns ``codes`` (integer codes of
    exact values), k_exposure, t_<tolerance column>..., t (date_obs_s), us (date_obs in
    microseconds), exposure_time_s.

    One integer stands for a kind's exact columns, not one column each: PostgreSQL's seeks
    compare every key column of the index at every step, and a dozen of them (text among
    them) made the nearest-master statement of a night of 1,000 lights 52 ms instead of 15.
    The ids are given, never generated: no autoincrement (no SERIAL and its sequence)."""
    return Table(
        name, MetaData(), Column("id", Integer, primary_key=True, autoincrement=False),
        *[Column(c, Integer) for c in codes],
        Column("k_exposure", BigInteger), *[Column(f"t_{c}", Float) for c in tolerance],
        Column("t", BigInteger), Column("us", BigInteger), Column("exposure_time_s", Float), *extra,
        prefixes=["TEMPORARY"],
    )


def _candidate_table(tolerance: Sequence[str], uid: str):
    """The temporary table of candidate masters of every kind: code (of the kind and its exact
    values), the key table's other columns and the tie-breaks."""
    cand = _key_table(
        f"sel_cand_{uid}", ["code"], tolerance, Column("neg_n_combined", Integer),
        Column("neg_created_us", BigInteger), Column("neg_id", Integer), Column("valid_from_us", BigInteger),
        Column("valid_until_us", BigInteger), Column("bias_subtracted", Boolean),
    )
    # two orderings of (code, exposure, time, tie-breaks): the nearest candidate of a kind
    # before and after a frame is then the first row of an index range scan (the tie-breaks are negated)
    prefix = [cand.c.code, cand.c.k_exposure]
    ties = [cand.c.neg_n_combined, cand.c.neg_created_us, cand.c.neg_id]
    Index(f"ix_sel_after_{uid}", *prefix, cand.c.t, *ties)
    Index(f"ix_sel_before_{uid}", *prefix, cand.c.t.desc(), *ties)
    return cand


def _exact_values(exact: Sequence[str]):
    """row (in ``_FRAME_COLUMNS`` order) -> the tuple of its values of the ``exact`` columns,
    compared with ``==`` (``None`` equals only ``None``), as the one-frame path compares them."""
    at = [_POSITION["instrument_id" if c == "instrument" else c] for c in exact]
    if len(at) < 2:  # itemgetter of one position gives the value, not a tuple (and needs one)
        return lambda row: tuple(row[i] for i in at)
    return itemgetter(*at)


def _key_function(tolerance: Sequence[str], exposure_tolerance_s: float | None):
    """(row in ``_FRAME_COLUMNS`` order, its codes) -> the key table's columns, as a tuple
    (``k_exposure`` is 0 when ``exposure_tolerance_s`` is None: exposure is no key)."""
    tol_at = [_POSITION[c] for c in tolerance]
    i_id, i_t = _POSITION["id"], _POSITION["date_obs_s"]
    i_date, i_exp = _POSITION["date_obs"], _POSITION["exposure_time_s"]

    def build(row, codes: Sequence[int]) -> tuple:
        exp = row[i_exp]
        if exposure_tolerance_s is None:
            k_exp = 0
        else:
            k_exp = -1 if exp is None else exposure_key(exp, exposure_tolerance_s)
        return (row[i_id], *codes, k_exp, *[row[i] for i in tol_at], row[i_t], epoch_microseconds(row[i_date]), exp)

    return build


def _common_conditions(light, cand, rules: KindRules) -> list:
    """The kind and its exact values (one code), tolerance, and validity at the frame's time."""
    conditions = [cand.c.code == light.c[f"code_{rules.kind}"]]
    for c, limit in rules.tolerance.items():
        a, b = cand.c[f"t_{c}"], light.c[f"t_{c}"]
        conditions.append(or_(and_(a.is_(None), b.is_(None)), func.abs(a - b) <= limit + 1e-9))
    conditions += [
        cand.c.id != light.c.id,
        or_(cand.c.valid_from_us.is_(None), light.c.us >= cand.c.valid_from_us),
        or_(cand.c.valid_until_us.is_(None), light.c.us < cand.c.valid_until_us),
    ]
    return conditions


def _nearest_query(light, cand, rules: KindRules, *, after: bool):
    window_s = int(rules.max_age_days * SECONDS_PER_DAY)
    conditions = _common_conditions(light, cand, rules)
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


def _scaled_query(light, cand, rules: KindRules, light_ids: Sequence[int]):
    """Darks: the nearest longer bias-subtracted master, by a window over the candidates."""
    window_s = int(rules.max_age_days * SECONDS_PER_DAY)
    conditions = _common_conditions(light, cand, rules) + [
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


def _bulk_select(connection, lights: Sequence[tuple], kinds: Sequence[str], matching: MatchingRules,
                 instrument_ids: set, libraries: Mapping[str, list], out: dict[tuple[int, str], Selection]) -> None:
    """The set-based selection of ``kinds`` for ``lights`` (rows in ``_FRAME_COLUMNS`` order,
    with a DATE-OBS): the frames in one table, the candidates of every kind in another, the
    nearest of each kind in one statement."""
    tolerance = list(dict.fromkeys(c for kind in kinds for c in matching[kind].tolerance))
    values = {kind: _exact_values(matching[kind].exact) for kind in kinds}
    codes: dict[tuple, int] = {}  # (kind, exact values) -> code
    n = len(_FRAME_COLUMNS)
    cand_rows = []
    for kind in kinds:
        rules = matching[kind]
        build = _key_function(tolerance, rules.exposure_tolerance_s if kind == "dark" else None)
        for row in libraries[kind]:
            if "instrument" in rules.exact and row[1] not in instrument_ids:
                continue
            code = codes.setdefault((kind, values[kind](row)), len(codes))
            n_combined, created_at, valid_from, valid_until, bias_subtracted = row[n:n + 5]
            cand_rows.append((*build(row, (code,)), -(n_combined or 0), -(epoch_microseconds(created_at) or 0), -row[0],
                              epoch_microseconds(valid_from), epoch_microseconds(valid_until), bool(bias_subtracted)))
    if not cand_rows:
        return
    info = {row[0]: (row[-9], row[-6], row[-5]) for row in cand_rows}  # id -> (t, -n_combined, -created_us)
    build = _key_function(tolerance, matching["dark"].exposure_tolerance_s)
    light_rows = [build(row, [codes.get((kind, values[kind](row)), _NO_CODE) for kind in kinds]) for row in lights]
    light_t = {row[0]: row[_POSITION["date_obs_s"]] for row in lights}
    uid = uuid.uuid4().hex[:12]
    light = _key_table(f"sel_light_{uid}", [f"code_{kind}" for kind in kinds], tolerance)
    cand = _candidate_table(tolerance, uid)
    light.create(connection)  # TEMPORARY scratch tables of this query, not schema
    cand.create(connection)
    try:
        insert_rows(connection, light, light_rows)
        insert_rows(connection, cand, cand_rows)
        for table in (light, cand):
            connection.exec_driver_sql(f"ANALYZE {table.name}")  # statistics for the planner (both backends)
        nearest = [_nearest_query(light, cand, matching[kind], after=after)
                   for kind in kinds for after in (False, True)]
        with index_seeks(connection):
            rows = execute_uncached(connection, select(light.c.id, *nearest)).all()
        version = matching.version
        for k, kind in enumerate(kinds):
            for row in rows:
                fid, b, a = row[0], row[1 + 2 * k], row[2 + 2 * k]
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
        rules = matching["dark"]
        if "dark" in kinds and rules.scale:
            left = [fid for fid in light_t if (fid, "dark") not in out]
            for chunk in chunked(left):
                for fid, mid, scale in execute_uncached(connection, _scaled_query(light, cand, rules, chunk)):
                    out[(fid, "dark")] = Selection(fid, "dark", "scaled", mid, float(scale), [(mid, float(scale))],
                                                   version, [], f"dark: master {mid} (scaled)")
    finally:
        cand.drop(connection)
        light.drop(connection)


def select_masters(
    session: Session,
    frame_ids: Iterable[int],
    kinds: Sequence[str] = CALIBRATION_KINDS,
    *,
    rules: RuleBook | MatchingRules | None = None,
    fallback: bool = True,
    batch_size: int = 5000,
    needs: Mapping[int, Sequence[str]] | None = None,
) -> dict[tuple[int, str], Selection]:
    """Select masters of ``kinds`` for many frames with a few set-based queries.

    Per group of instruments sharing their rules: the frames and the candidate masters of
    every kind are loaded into two temporary tables, each kind's exact columns as one code;
    one statement finds, for every frame and kind at once, the nearest valid candidate before
    and after it (index seeks on the candidates' code, exposure key and ``date_obs_s``); a
    second one, a window over the candidates, finds the nearest longer bias-subtracted dark for
    the frames without an exact-exposure one. The ordering is the one
    of :func:`archive.calib.select.select_master`. Frames left without a master are judged one
    by one (:func:`archive.calib.select.explain_selection`) when ``fallback``, which finds
    interpolated darks and dark models and names the rule that removed the last candidates.

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
    needs : mapping of int to sequence of str, optional
        Per frame, the kinds it needs (among ``kinds``; a frame not in it needs ``kinds``):
        frames of instruments that require different calibrations are selected together, and
        only the pairs asked for are judged and returned.

    Returns
    -------
    dict of (frame_id, kind) to Selection
        The set-based selections carry no candidate verdicts (``candidates == []``).
    """
    ids = list(dict.fromkeys(frame_ids))
    if not ids:  # nothing to select (and an empty id table would leave the planner scanning frames)
        return {}
    rules = rules if rules is not None else default_rulebook()
    book = rules if isinstance(rules, RuleBook) else None
    frames = Frame.__table__
    columns = [frames.c[c] for c in _FRAME_COLUMNS]
    by_instrument: dict[int | None, list] = {}
    # the frames: their ids go to a temporary table joined to frames (no long IN lists)
    # ids given, never generated: no autoincrement (on PostgreSQL no SERIAL, no sequence to create and drop)
    wanted = Table(f"sel_ids_{uuid.uuid4().hex[:12]}", MetaData(),
                   Column("id", Integer, primary_key=True, autoincrement=False), prefixes=["TEMPORARY"])
    connection = session.connection()
    wanted.create(connection)  # a TEMPORARY scratch table of this query, not schema
    try:
        insert_rows(connection, wanted, [(i,) for i in ids])
        connection.exec_driver_sql(f"ANALYZE {wanted.name}")
        with index_seeks(connection):
            rows = execute_uncached(connection, select(*columns).join(wanted, wanted.c.id == frames.c.id)).all()
        for row in rows:
            by_instrument.setdefault(row[1], []).append(tuple(row))
    finally:
        wanted.drop(connection)
    names = instrument_names(session, by_instrument)
    # instruments that share their rules are selected together (the instrument is a key column)
    by_rules: dict[int, tuple[MatchingRules, set, list]] = {}
    for iid, rows in by_instrument.items():
        matching = rules_for(book or rules, names.get(iid))
        entry = by_rules.setdefault(id(matching), (matching, set(), []))
        entry[1].add(iid)
        entry[2].extend(rows)
    # the library of every kind asked for, in one statement: only the masters within the kind's
    # largest max_age_days of the frames' DATE-OBS span (no other can be chosen by the set-based
    # queries), so the work follows the frames asked about, not the size of the library
    i_t = _FRAME_COLUMNS.index("date_obs_s")
    times = [row[i_t] for rows in by_instrument.values() for row in rows if row[i_t] is not None]
    libraries: dict[str, list] = {kind: [] for kind in kinds}
    if times and by_rules:
        first, last = min(times), max(times)
        longest_s = max(m[kind].max_age_days for m, _, _ in by_rules.values() for kind in kinds) * SECONDS_PER_DAY
        near = [frames.c.image_type.in_(MASTER_TYPES)]  # a master's frame is of a master type
        if math.isfinite(longest_s):
            # the night is the date of DATE-OBS shifted by -24 h to 0 h (observing_night), so
            # these nights hold every frame of the window: the (image_type, night) index finds
            # the library's few masters, where a DATE-OBS range alone reads every frame of it
            span = dt.timedelta(seconds=longest_s + SECONDS_PER_DAY)
            start = dt.datetime.fromtimestamp(first, dt.UTC).date() - span
            end = dt.datetime.fromtimestamp(last, dt.UTC).date() + span
            near.append(frames.c.night.between(start, end))
        per_kind = []
        for kind in kinds:
            age_s = max(m[kind].max_age_days for m, _, _ in by_rules.values()) * SECONDS_PER_DAY
            if math.isfinite(age_s):
                per_kind.append(and_(Master.kind == kind, frames.c.date_obs_s >= first - int(age_s) - 1,
                                     frames.c.date_obs_s <= last + int(age_s) + 1))
            else:
                per_kind.append(Master.kind == kind)
        # no index_seeks hint: without bitmap scans and hash joins PostgreSQL walks the night
        # index over every frame of the window (1,000,000 frames: 25 ms); with them it takes the
        # (image_type, night) index and hashes the masters (5 to 15 ms)
        library = connection.execute(
            select(*columns, Master.n_combined, Master.created_at, Master.valid_from, Master.valid_until,
                   Master.bias_subtracted, Master.kind)
            .join(Master, Master.frame_id == frames.c.id)
            .where(*near, or_(*per_kind), ~Master.is_bad, frames.c.date_obs_s.is_not(None))
        ).all()
        for row in library:
            libraries[row[-1]].append(tuple(row))
    out: dict[tuple[int, str], Selection] = {}
    def wanted_kinds(frame_id: int):
        return kinds if needs is None or frame_id not in needs else needs[frame_id]

    whole: dict[str, list] = {}  # the whole library of a kind, for the frames judged one by one

    def loaded(kind: str) -> list:
        if kind not in whole:
            whole[kind] = masters_of(session, kind)
        return whole[kind]

    for matching, instrument_ids, lights in by_rules.values():
        group_kinds = [k for k in kinds if any(k in wanted_kinds(row[0]) for row in lights)]
        if not group_kinds:
            continue
        dated = [row for row in lights if row[i_t] is not None]
        if dated:
            _bulk_select(connection, dated, group_kinds, matching, instrument_ids, libraries, out)
        for kind in group_kinds:
            if fallback:
                left = [row[0] for row in lights if (row[0], kind) not in out and kind in wanted_kinds(row[0])]
                if left:
                    library = loaded(kind)
                    models = loaded(DARK_MODEL) if kind == "dark" else None
                    for batch in chunked(left, batch_size):
                        for frame in session.scalars(select(Frame).where(Frame.id.in_(batch))):
                            out[(frame.id, kind)] = explain_selection(session, frame, kind, rules=matching,
                                                                      library=library, models=models)
    if needs is not None:
        out = {(fid, kind): sel for (fid, kind), sel in out.items() if kind in wanted_kinds(fid)}
    return out
