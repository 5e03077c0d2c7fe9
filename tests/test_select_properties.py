"""Property tests of master selection (hypothesis), on SQLite and PostgreSQL.

Each example is a SYNTHETIC library: frame rows inserted directly (no files: selection reads
only the catalogue), rolled back at the end. The properties, checked against an independent
reading of the rules written here:

* the chosen master satisfies every hard rule (exact keys, tolerances, age, bad flag, validity,
  exposure);
* no valid candidate is better: none of a preferred method (exact exposure before scaled), and
  within the chosen method and exposure none nearer in time;
* nothing is chosen only when no candidate is valid;
* the choice is deterministic, and the set-based path (``select_masters``) agrees with it.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.calib import RuleBook, explain_selection, select_masters
from archive.db.models import Frame, Instrument, Master

RULES = RuleBook().default
T0 = dt.datetime(2026, 5, 1, 22, 0, 0)
_counter = itertools.count()

# skewed towards valid candidates, so that every method and tie-break is exercised
master_strategy = st.fixed_dictionaries({
    "binning": st.sampled_from([1, 1, 1, 2]),
    "set_temp_c": st.sampled_from([-10.0, -10.0, -9.0, -11.5, -20.0, None]),
    "exposure": st.sampled_from([30.0, 60.0, 120.0, 300.0]),
    "filter": st.sampled_from(["Ha", "Ha", "OIII", None]),
    "offset_s": st.one_of(st.integers(-45 * 86400, 45 * 86400), st.sampled_from([-3600, 3600, 7200])),
    "n_combined": st.sampled_from([None, 3, 5, 20]),
    "bias_subtracted": st.booleans(),
    "is_bad": st.sampled_from([False, False, False, True]),
    "validity": st.sampled_from([None, None, None, "before", "after", "around"]),
    "instrument": st.sampled_from(["A", "A", "A", "B"]),
    "built_s": st.integers(0, 1000),
})
light_strategy = st.fixed_dictionaries({
    "binning": st.sampled_from([1, 1, 1, 2]),
    "set_temp_c": st.sampled_from([-10.0, -10.0, -9.0, -20.0, None]),
    "exposure": st.sampled_from([30.0, 60.0, 90.0, 120.0, 600.0]),
    "filter": st.sampled_from(["Ha", "OIII", None]),
})


def _frame(instrument_id, image_type, spec, when) -> Frame:
    n = next(_counter)
    return Frame(
        sha256=f"{n:064d}", image_type=image_type, exposure_time_s=spec["exposure"], filter_name=spec["filter"],
        binning_x=spec["binning"], binning_y=spec["binning"], set_temp_c=spec["set_temp_c"], gain=100.0, offset=50.0,
        readout_mode="Normal", instrument_id=instrument_id, naxis1=64, naxis2=48, date_obs=when,
        date_obs_s=int((when - dt.datetime(1970, 1, 1)).total_seconds()), hdu_index=0, header="", sources={},
        ingested_at=T0,
    )


def _valid_by_rules(kind, light: Frame, master: Master, mframe: Frame) -> str | None:
    """The rules of configs/matching/default.toml read independently: the method or None."""
    kr = RULES[kind]
    for column in kr.exact:
        a = light.instrument_id if column == "instrument" else getattr(light, column)
        b = mframe.instrument_id if column == "instrument" else getattr(mframe, column)
        if a != b:
            return None
    for column, limit in kr.tolerance.items():
        a, b = getattr(light, column), getattr(mframe, column)
        if (a is None) != (b is None) or (a is not None and abs(a - b) > limit):
            return None
    if abs(light.date_obs_s - mframe.date_obs_s) > kr.max_age_days * 86400 or master.is_bad:
        return None
    if master.valid_from and light.date_obs < master.valid_from or master.valid_until and light.date_obs >= master.valid_until:
        return None
    if kind != "dark":
        return "exact"
    if abs(light.exposure_time_s - mframe.exposure_time_s) <= kr.exposure_tolerance_s:
        return "exact"
    if kr.scale and master.bias_subtracted and mframe.exposure_time_s > light.exposure_time_s:
        return "scaled"
    if kr.scale_up and master.bias_subtracted and mframe.exposure_time_s < light.exposure_time_s:
        return "scaled_up"  # the last resort: after exact, longer and interpolated darks
    return None


def _check(engine, kind, masters, light_spec):
    with Session(engine) as session:
        instruments = {name: Instrument(name=name) for name in ("A", "B")}
        session.add_all(instruments.values())
        session.flush()
        pairs = []
        for spec in masters:
            when = T0 + dt.timedelta(seconds=spec["offset_s"])
            mframe = _frame(instruments[spec["instrument"]].id, f"master_{kind}", spec, when)
            session.add(mframe)
            session.flush()
            validity = {
                None: (None, None), "before": (None, T0 - dt.timedelta(hours=1)),
                "after": (T0 + dt.timedelta(hours=1), None), "around": (T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1)),
            }[spec["validity"]]
            master = Master(
                frame_id=mframe.id, kind=kind, origin="built", n_combined=spec["n_combined"], combine_method="median",
                bias_subtracted=spec["bias_subtracted"], is_bad=spec["is_bad"], valid_from=validity[0],
                valid_until=validity[1], created_at=T0 + dt.timedelta(seconds=spec["built_s"]),
            )
            session.add(master)
            pairs.append((master, mframe))
        light = _frame(instruments["A"].id, "light", light_spec, T0)
        session.add(light)
        session.flush()

        selection = explain_selection(session, light, kind, rules=RULES)
        again = explain_selection(session, light, kind, rules=RULES)
        assert (again.method, again.master_id, again.weights) == (selection.method, selection.master_id, selection.weights)
        bulk = select_masters(session, [light.id], [kind], rules=RULES)[(light.id, kind)]
        assert (bulk.method, bulk.master_id) == (selection.method, selection.master_id)

        valid = [(m, f, method) for m, f in pairs if (method := _valid_by_rules(kind, light, m, f))]
        preferred = [(m, f, meth) for m, f, meth in valid if meth != "scaled_up"]
        chosen = next(((m, f) for m, f in pairs if f.id == selection.master_id), None)
        if selection.method == "scaled" and _valid_by_rules(kind, light, *chosen) == "scaled_up":
            assert not preferred  # no exact or longer dark; and the longest shorter one is taken
            assert not any(meth == "scaled_up" and f.exposure_time_s > chosen[1].exposure_time_s for _, f, meth in valid)
        elif selection.method in ("exact", "scaled"):
            method = _valid_by_rules(kind, light, *chosen)
            assert method == selection.method  # the chosen master satisfies every hard rule
            if method == "scaled":
                assert not any(meth == "exact" for _, _, meth in valid)
                assert not any(meth == "scaled" and f.exposure_time_s < chosen[1].exposure_time_s for _, f, meth in valid)
            delta = abs(chosen[1].date_obs_s - light.date_obs_s)
            for m, f, meth in valid:
                if meth == method and f.exposure_time_s == chosen[1].exposure_time_s or kind != "dark" and meth == method:
                    assert abs(f.date_obs_s - light.date_obs_s) >= delta  # none nearer in time
        elif selection.method == "interpolated":
            assert kind == "dark" and not preferred
            assert abs(sum(w for _, w in selection.weights) - 1.0) < 1e-9
        else:
            assert not valid
            if selection.candidates:
                assert "removed the last" in selection.explanation
        session.rollback()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["bias", "dark", "flat"]), masters=st.lists(master_strategy, max_size=12), light=light_strategy)
def test_selection_properties(engine, kind, masters, light):
    _check(engine, kind, masters, light)


# darks that pass every rule but the exposure one: exact, scaled and interpolated darks and ties
dark_strategy = st.fixed_dictionaries({
    "binning": st.just(1), "set_temp_c": st.just(-10.0), "exposure": st.sampled_from([30.0, 60.0, 120.0, 300.0]),
    "filter": st.just(None), "offset_s": st.sampled_from([-7200, -3600, 3600, 7200, 86400, -86400 * 3]),
    "n_combined": st.sampled_from([None, 5, 20]), "bias_subtracted": st.booleans(), "is_bad": st.just(False),
    "validity": st.just(None), "instrument": st.just("A"), "built_s": st.integers(0, 3),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(masters=st.lists(dark_strategy, min_size=1, max_size=8),
       exposure=st.sampled_from([30.0, 45.0, 60.0, 200.0, 600.0]))
def test_dark_selection_properties(engine, masters, exposure):
    _check(engine, "dark", masters, {"binning": 1, "set_temp_c": -10.0, "exposure": exposure, "filter": None})


def _library(session: Session, kind: str, specs: list[dict]) -> list[Frame]:
    """Masters of ``kind`` from specs (``exposure``, ``offset_s``, ``bias_subtracted``), instrument A."""
    instrument = Instrument(name="A")
    session.add(instrument)
    session.flush()
    frames = []
    for spec in specs:
        full = {"binning": 1, "set_temp_c": -10.0, "filter": None, **spec}
        mframe = _frame(instrument.id, f"master_{kind}", full, T0 + dt.timedelta(seconds=spec["offset_s"]))
        session.add(mframe)
        session.flush()
        session.add(Master(frame_id=mframe.id, kind=kind, origin="built", n_combined=5, combine_method="median",
                           bias_subtracted=spec["bias_subtracted"], is_bad=False, created_at=T0))
        frames.append(mframe)
    session.flush()
    return frames


def test_interpolation_counts_exposures_within_the_tolerance_once(engine):
    """Two darks 0.004 s apart (tolerance 0.01 s) are one exposure: no line through them."""
    with Session(engine) as session:
        _library(session, "dark", [{"exposure": 60.0, "offset_s": -3600, "bias_subtracted": True},
                                   {"exposure": 60.004, "offset_s": -7200, "bias_subtracted": True}])
        light = _frame(session.scalars(select(Instrument.id)).one(), "light",
                       {"binning": 1, "set_temp_c": -10.0, "filter": None, "exposure": 300.0}, T0)
        session.add(light)
        session.flush()
        selection = explain_selection(session, light, "dark", rules=RULES)
        # no line through them: the last resort (scale_up) scales the longer of the two up
        assert selection.method == "scaled" and "scaled up" in selection.explanation
        assert selection.scale == pytest.approx(300.0 / 60.004)
        session.rollback()


def test_interpolated_master_id_is_one_of_those_combined(engine):
    with Session(engine) as session:
        a, _, c, d = _library(session, "dark", [
            {"exposure": 60.0, "offset_s": -3600, "bias_subtracted": True},
            {"exposure": 60.0, "offset_s": -7200, "bias_subtracted": True},
            {"exposure": 120.0, "offset_s": -10800, "bias_subtracted": True},
            {"exposure": 30.0, "offset_s": -600, "bias_subtracted": False},  # nearest, but cannot be combined
        ])
        light = _frame(a.instrument_id, "light", {"binning": 1, "set_temp_c": -10.0, "filter": None, "exposure": 300.0}, T0)
        session.add(light)
        session.flush()
        selection = explain_selection(session, light, "dark", rules=RULES)
        assert selection.method == "interpolated"
        assert {mid for mid, _ in selection.weights} == {a.id, c.id}
        assert selection.master_id == a.id != d.id
        session.rollback()
