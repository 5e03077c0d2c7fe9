"""Reduction state as columns (migration 0004): today's rows carried over from revision 0003,
and two processes asking for one product at once. Both backends."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import socket
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine, func, select

from archive.db.migrate import downgrade, upgrade
from archive.db.models import Master, Reduction, ReductionInput
from archive.db.provenance import find_reduction, start_reduction
from archive.db.session import database_url, open_catalogue, session_scope
from archive.ingest.ingest import ingest_paths
from tests.factories import nina_header, write_fits

BASE = dt.datetime(2026, 3, 2, 20, 0, 0)
T0 = dt.datetime(2026, 11, 20, 23, 0, 0)

# the tables as revision 0003 has them
REDUCTIONS = sa.table(
    "reductions", sa.column("id", sa.Integer), sa.column("step", sa.String), sa.column("fingerprint", sa.String),
    sa.column("parameters", sa.JSON), sa.column("software", sa.JSON), sa.column("host", sa.String),
    sa.column("started_at", sa.DateTime), sa.column("finished_at", sa.DateTime), sa.column("status", sa.String),
    sa.column("message", sa.Text), sa.column("rule_version", sa.String),
)
INPUTS = sa.table("reduction_inputs", sa.column("reduction_id", sa.Integer), sa.column("frame_id", sa.Integer),
                  sa.column("role", sa.String))
FRAMES = sa.table("frames", sa.column("id", sa.Integer), sa.column("reduction_id", sa.Integer))
SELECTIONS = sa.table(
    "calibration_selections", sa.column("id", sa.Integer), sa.column("frame_id", sa.Integer),
    sa.column("kind", sa.String), sa.column("master_id", sa.Integer), sa.column("method", sa.String),
    sa.column("rule_version", sa.String), sa.column("decided_at", sa.DateTime), sa.column("candidates", sa.JSON),
    sa.column("reduction_id", sa.Integer),
)
MASTERS = sa.table(
    "masters", sa.column("frame_id", sa.Integer), sa.column("kind", sa.String), sa.column("origin", sa.String),
    sa.column("n_combined", sa.Integer), sa.column("bias_subtracted", sa.Boolean), sa.column("is_bad", sa.Boolean),
    sa.column("created_at", sa.DateTime),
)
PROJECTS = sa.table(
    "projects", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("target", sa.String),
    sa.column("filters", sa.JSON), sa.column("folder", sa.String), sa.column("created_at", sa.DateTime),
)
GOALS = sa.table("project_goals", sa.column("project_id", sa.Integer), sa.column("filter_name", sa.String),
                 sa.column("goal_s", sa.Float))

REGISTER = {"reference_rule": "most_stars", "detect_sigma": 5.0, "max_control_points": 50,
            "max_shift_fraction": 0.15, "interpolation": "bilinear"}


def _frames(engine, root: Path) -> list[int]:
    """SYNTHETIC: eight small frames (lights and biases) catalogued; their ids by DATE-OBS."""
    paths = [write_fits(root / f"f{i}.fits", nina_header("LIGHT" if i < 6 else "BIAS", **{
        "DATE-OBS": (T0 + dt.timedelta(minutes=i)).isoformat()}), seed=i + 1, shape=(8, 8)) for i in range(8)]
    ingest_paths(engine, paths)
    with session_scope(engine) as session:
        return list(session.scalars(sa.text("SELECT id FROM frames ORDER BY date_obs_s, id")))


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_upgrade_from_0003_carries_reductions_masters_and_projects_over(db_url, tmp_path):
    setup = open_catalogue(db_url)
    f = _frames(setup, tmp_path / "raw")
    setup.dispose()
    engine = create_engine(database_url(db_url))
    downgrade(engine, "0003")
    host, dead = socket.gethostname(), _dead_pid()

    def row(rid, step, fp, status, parameters, message=None):
        return {"id": rid, "step": step, "fingerprint": fp * 64, "parameters": parameters, "software": {"numpy": "2"},
                "host": host, "started_at": T0 + dt.timedelta(minutes=rid), "status": status, "message": message,
                "finished_at": None if status == "running" else T0 + dt.timedelta(minutes=rid, seconds=30),
                "rule_version": None}

    with engine.begin() as conn:
        conn.execute(sa.insert(REDUCTIONS), [
            row(1, "calibrate", "a", "done", {"cosmic_rays": False, "missing": []}),
            row(2, "stack", "b", "running", {"method": "median"}, f"claimed by {host} pid {dead}"),
            row(3, "stack", "e", "running", {"method": "median"}, "claimed by elsewhere pid 7"),
            row(4, "register", "r", "failed", {**REGISTER, "group": "g1", "n_stars": 3, "reference_stars": 40,
                                               "failure": "alignment"}, "too few stars"),
            row(5, "register", "s", "done", {**REGISTER, "group": "g1", "n_stars": 38, "reference_stars": 40,
                                             "dx": 3.2, "dy": -2.1, "rotation_deg": 0.01, "scale": 1.0}),
            row(6, "calibrate", "c", "done", {"cosmic_rays": False}),   # three rows of one fingerprint:
            row(7, "calibrate", "c", "failed", {"cosmic_rays": False}, "OSError: disk full"),
            row(8, "calibrate", "c", "done", {"cosmic_rays": False}),   # kept: the newest done one
            row(9, "calibrate", "d", "failed", {"cosmic_rays": False}, "OSError: NFS hiccup"),
            row(10, "master_bias", "m", "done", {"combine": "median", "group": {"night": "2026-11-20"}}),
        ])
        conn.execute(sa.insert(INPUTS), [
            {"reduction_id": 4, "frame_id": f[1], "role": "input"}, {"reduction_id": 4, "frame_id": f[0], "role": "reference"},
            {"reduction_id": 6, "frame_id": f[2], "role": "light"}, {"reduction_id": 6, "frame_id": f[6], "role": "master_bias"},
            {"reduction_id": 7, "frame_id": f[2], "role": "light"}, {"reduction_id": 7, "frame_id": f[7], "role": "master_bias"},
            {"reduction_id": 8, "frame_id": f[2], "role": "light"},
        ])
        conn.execute(sa.update(FRAMES).where(FRAMES.c.id == f[3]).values(reduction_id=6))  # a product of a dropped row
        conn.execute(sa.update(FRAMES).where(FRAMES.c.id == f[4]).values(reduction_id=8))
        conn.execute(sa.update(FRAMES).where(FRAMES.c.id == f[5]).values(reduction_id=5))
        selection = {"frame_id": f[2], "kind": "bias", "method": "exact", "rule_version": "1",
                     "decided_at": T0, "candidates": []}
        conn.execute(sa.insert(SELECTIONS), [{**selection, "id": 1, "master_id": f[6], "reduction_id": 6},
                                             {**selection, "id": 2, "master_id": f[7], "reduction_id": 7}])
        conn.execute(sa.insert(MASTERS), [{"frame_id": f[6], "kind": "bias", "origin": "built", "n_combined": 3,
                                           "bias_subtracted": False, "is_bad": False, "created_at": T0}])
        conn.execute(sa.insert(PROJECTS), [{"id": 1, "name": "m31", "target": "M 31", "filters": ["Ha"],
                                            "folder": "/p/m31", "created_at": T0}])
        conn.execute(sa.insert(GOALS), [{"project_id": 1, "filter_name": "Ha", "goal_s": 3600.0}])

    upgrade(engine)
    engine.dispose()
    catalogue = open_catalogue(db_url)  # refuses a catalogue that is not at the head revision
    try:
        with session_scope(catalogue) as session:
            rows = {r.id: r for r in session.scalars(select(Reduction))}
            assert sorted(rows) == [1, 2, 3, 4, 5, 8, 9, 10]  # 6 and 7 merged into 8
            claimed = rows[2]
            assert (claimed.claim_host, claimed.claim_pid, claimed.claimed_at) == (host, dead, claimed.started_at)
            assert claimed.message is None and claimed.parameters == {"method": "median"}
            assert (rows[3].claim_host, rows[3].claim_pid) == ("elsewhere", 7)
            assert rows[4].failure_kind == "alignment" and rows[4].message == "too few stars"
            assert rows[4].parameters == REGISTER and rows[4].group_key == "g1"
            assert rows[4].results == {"n_stars": 3, "reference_stars": 40}
            assert rows[5].parameters == REGISTER and rows[5].group_key == "g1" and rows[5].failure_kind is None
            assert rows[5].results == {"n_stars": 38, "reference_stars": 40, "dx": 3.2, "dy": -2.1,
                                       "rotation_deg": 0.01, "scale": 1.0}
            assert rows[9].failure_kind == "error"
            assert rows[10].parameters == {"combine": "median", "group": {"night": "2026-11-20"}}  # asked: kept
            assert rows[10].group_key is None and rows[10].results is None
            assert all(r.claim_host is None for rid, r in rows.items() if rid not in (2, 3))
            assert all(r.failure_kind is None for r in rows.values() if r.status != "failed")
            # the merged fingerprint: products, inputs and the selection of the newest dropped row
            assert set(session.scalars(select(FRAMES.c.id).where(FRAMES.c.reduction_id == 8))) == {f[3], f[4]}
            assert set(session.execute(select(ReductionInput.frame_id, ReductionInput.role)
                                       .where(ReductionInput.reduction_id == 8))) == {
                (f[2], "light"), (f[6], "master_bias"), (f[7], "master_bias")}
            assert session.scalar(select(func.count()).select_from(ReductionInput)
                                  .where(ReductionInput.reduction_id.in_([6, 7]))) == 0
            assert session.execute(select(SELECTIONS.c.id, SELECTIONS.c.reduction_id)).all() == [(2, 8)]
            masters = session.scalars(select(Master)).all()
            assert [(m.frame_id, m.kind, m.n_combined) for m in masters] == [(f[6], "bias", 3)]
            assert session.execute(select(PROJECTS.c.name, PROJECTS.c.filters)).all() == [("m31", ["Ha"])]
            assert session.execute(select(GOALS.c.filter_name, GOALS.c.goal_s)).all() == [("Ha", 3600.0)]
        # the application works on it
        with session_scope(catalogue, write=True) as session:
            assert find_reduction(session, "c" * 64).id == 8
            assert start_reduction(session, "calibrate", "a" * 64, {}, None, [(f[0], "light")]) is None  # done
            assert start_reduction(session, "stack", "e" * 64, {}, None, [(f[0], "input")]) is None  # elsewhere
            taken = start_reduction(session, "stack", "b" * 64, {"method": "median"}, None, [(f[0], "input")])
            assert taken.id == 2 and (taken.claim_host, taken.claim_pid) == (host, os.getpid())
            again = start_reduction(session, "calibrate", "d" * 64, {"cosmic_rays": False}, None, [(f[0], "light")])
            assert again.id == 9 and again.failure_kind is None and again.status == "running"
        with pytest.raises(sa.exc.IntegrityError), session_scope(catalogue, write=True) as session:
            session.add(Reduction(step="stack", fingerprint="c" * 64, parameters={}, software={}, host=host,
                                  started_at=T0, status="running"))
            session.flush()  # the fingerprint is unique
    finally:
        catalogue.dispose()

    # and back: outcomes into parameters, claims into message
    engine = create_engine(database_url(db_url))
    try:
        downgrade(engine, "0003")
        with engine.connect() as conn:
            back = {r.id: r for r in conn.execute(select(REDUCTIONS))}
        assert back[4].parameters == {**REGISTER, "group": "g1", "n_stars": 3, "reference_stars": 40,
                                      "failure": "alignment"}
        assert back[5].parameters["dx"] == 3.2 and back[5].parameters["group"] == "g1"
        assert back[3].message == "claimed by elsewhere pid 7"
        assert back[2].message == f"claimed by {host} pid {os.getpid()}"
        assert "failure" not in back[9].parameters
        upgrade(engine)
    finally:
        engine.dispose()


# -- two processes, one product ------------------------------------------------------------------


def _build_in_process(db_url: str, library: str, barrier, out) -> None:
    """A separate process: build the bias master, both processes combining pixels at once."""
    from archive.calib import build_masters, masters

    compute = masters._compute

    def both_computing(*args, **kwargs):
        barrier.wait()
        return compute(*args, **kwargs)

    masters._compute = both_computing
    engine = open_catalogue(db_url)
    try:
        summary = build_masters(engine, library=Path(library), kinds=["bias"])
        out.put((len(summary.built), summary.unchanged, summary.busy, len(summary.failed)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put(repr(exc))
    finally:
        engine.dispose()


def test_two_processes_asking_for_one_master_build_it_once(db_url, tmp_path):
    engine = open_catalogue(db_url)
    try:
        paths = [write_fits(tmp_path / "raw" / f"bias_{i}.fits", nina_header("BIAS", **{
            "DATE-OBS": (BASE + dt.timedelta(minutes=i)).isoformat(), "EXPTIME": 0.0, "EXPOSURE": 0.0,
            "OBJECT": ""}), seed=i + 1, shape=(12, 10)) for i in range(3)]
        ingest_paths(engine, paths)
    finally:
        engine.dispose()
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2, timeout=120), context.Queue()
    processes = [context.Process(target=_build_in_process, args=(db_url, str(tmp_path / "library"), barrier, out))
                 for _ in range(2)]
    for process in processes:
        process.start()
    results = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    assert all(isinstance(r, tuple) for r in results), results
    built, unchanged, busy, failed = (sum(r[i] for r in results) for i in range(4))
    assert built == 1 and unchanged + busy == 1 and failed == 0, results
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            reductions = session.scalars(select(Reduction)).all()
            assert [(r.step, r.status, r.claim_host) for r in reductions] == [("master_bias", "done", None)]
            assert session.scalar(select(func.count()).select_from(Master)) == 1
    finally:
        engine.dispose()


def _claim_in_process(db_url: str, frame_id: int, barrier, out) -> None:
    """A separate process: ask for one fingerprint at the barrier, hold the transaction a moment."""
    import time

    engine = open_catalogue(db_url)
    try:
        barrier.wait()
        with session_scope(engine, write=True) as session:
            reduction = start_reduction(session, "stack", "f" * 64, {"method": "median"}, None, [(frame_id, "input")])
            time.sleep(0.3)
        out.put(reduction.id if reduction is not None else None)
        # stay alive until every process has asked: a claim whose process has ended is free
        # (start_reduction's rule), so an early exit would hand the claim on (SQLite runs the
        # three write transactions one after the other)
        barrier.wait()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put(repr(exc))
    finally:
        engine.dispose()


@pytest.mark.parametrize("before", ["absent", "failed"])
def test_processes_claiming_one_fingerprint_at_once_get_it_once(db_url, tmp_path, before):
    """Three processes ask for one fingerprint at once, the row absent (each inserts it if
    absent) or left failed (each sees it free and tries the conditional claim)."""
    engine = open_catalogue(db_url)
    try:
        frame_id = _frames(engine, tmp_path / "raw")[0]
        if before == "failed":
            with session_scope(engine, write=True) as session:
                session.add(Reduction(step="stack", fingerprint="f" * 64, parameters={}, software={}, host="h",
                                      started_at=T0, finished_at=T0, status="failed", failure_kind="error"))
    finally:
        engine.dispose()
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(3, timeout=120), context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(db_url, frame_id, barrier, out)) for _ in range(3)]
    for process in processes:
        process.start()
    results = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    assert results.count(None) == 2 and sum(isinstance(r, int) for r in results) == 1, results
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            assert session.scalar(select(func.count()).select_from(Reduction)) == 1
            assert session.scalars(select(Reduction)).one().status == "running"
    finally:
        engine.dispose()


# -- the pipeline writes the columns -------------------------------------------------------------


def test_a_night_keeps_outcomes_apart_from_parameters(db_url, tmp_path):
    """A reduced night: registrations carry their group and results (the shift equals the one
    written into the registered file), their parameters are what was asked; the light that does
    not align is rejected (``alignment``); no row keeps a claim; the tree shows the results."""
    from astropy.io import fits

    from archive import keywords as kw
    from archive.db.frames import canonical_paths
    from archive.db.models import Frame
    from archive.cli.provenance_text import format_tree
    from archive.db.provenance import provenance_tree
    from archive.reduce.registration import registration_parameters
    from tests.test_reduce_pipeline import _night, synthetic_night

    synthetic_night(tmp_path / "imaging" / "2026-11-20")
    assert _night(db_url, tmp_path).exit_code == 0  # the noise light does not align: rejected, no failure
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            reductions = session.scalars(select(Reduction)).all()
            assert reductions and all(r.claim_host is None and r.claim_pid is None for r in reductions)
            registered = [r for r in reductions if r.step == "register"]
            assert len(registered) == 4 and len({r.group_key for r in registered}) == 1
            assert registered[0].group_key is not None
            assert all(r.parameters == registration_parameters({}) for r in registered)
            assert all(r.group_key is None for r in reductions if r.step != "register")
            rejected = [r for r in registered if r.status == "rejected"]
            assert [r.failure_kind for r in rejected] == ["alignment"] and set(rejected[0].results) == {
                "n_stars", "reference_stars", "fixed_pattern", "stars_from"}
            done = [r for r in registered if r.status == "done"]
            outputs = {r.id: session.scalars(select(Frame).where(Frame.reduction_id == r.id)).one() for r in done}
            paths = canonical_paths(session, [f.id for f in outputs.values()])
            for r in done:
                header = fits.getheader(paths[outputs[r.id].id])
                assert r.results["dx"] == pytest.approx(header[kw.SHIFT_X])
                assert r.results["dy"] == pytest.approx(header[kw.SHIFT_Y])
                assert r.results["n_stars"] > 0 and r.failure_kind is None
            assert min(abs(r.results["dx"]) + abs(r.results["dy"]) for r in done) < 0.5  # the reference
            lines = format_tree(provenance_tree(session, next(iter(outputs.values()))), width=200)
            assert any("results:" in line and "dx=" in line for line in lines)
    finally:
        engine.dispose()
