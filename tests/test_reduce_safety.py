"""Reduction safety: output layouts are validated, two runs never claim one product, and
``archive reduce`` refuses options it cannot honour. Both backends where a catalogue is used.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from archive.cli import main
from archive.db.models import Frame, Reduction
from archive.db.session import open_catalogue, session_scope
from archive.errors import ConfigError
from archive.db import provenance
from archive.reduce.config import check_layout, load_reduction_config
from archive.db.provenance import finish_reduction, start_reduction
from tests.factories import nina_header, write_fits


@pytest.mark.parametrize("kind, template, message", [
    ("calibrated", "../{night}/{stem}_{fp}.fits", "plain path"),
    ("calibrated", "/abs/{stem}_{fp}.fits", "plain path"),
    ("calibrated", "{night}//{stem}_{fp}.fits", "plain path"),
    ("calibrated", "{night}/{stem}_cal.fits", "must contain {fp}"),
    ("registered", "{night}/{object}_{fp}.fits", "unknown field {object}"),
    ("registered", "{night}/{stem}_{fp!r}.fits", "no format spec"),
    ("registered", "{night}/{stem}_{fp:>20}.fits", "no format spec"),
    ("stacked", "{target}/{group}.png", "must end in .fits"),
    ("stacked", "{target}/{stem}_{group}.fits", "unknown field {stem}"),
    ("stacked", "{target}/{group.x}.fits", "unknown field"),
    ("stacked", "{target}/{group", "not a valid template"),
])
def test_bad_layouts_are_config_errors(kind, template, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace("|", r"\|")):
        check_layout(kind, template)


def test_good_layouts_pass():
    assert check_layout("calibrated", "{instrument}/{night}/{stem}_{fp}_cal.fits")
    assert check_layout("stacked", "stacks/{target}_{fp}.fit")
    assert set(load_reduction_config().layout) == {"calibrated", "registered", "stacked"}


def test_a_bad_layout_is_one_clear_line(db_url, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[reduction.output]\ncalibrated = "../../{stem}_{fp}.fits"\n')
    result = CliRunner().invoke(main, ["--db", db_url, "reduce", "--serial"], env={"ARCHIVE_CONFIG": str(config)})
    assert result.exit_code == 1
    assert "plain path" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, (ValueError, KeyError))


def test_reduce_refuses_a_type_other_than_light(db_url, tmp_path):
    (tmp_path / "none.toml").write_text("")  # an empty user file (ARCHIVE_CONFIG must name a file)
    env = {"ARCHIVE_CONFIG": str(tmp_path / "none.toml")}
    result = CliRunner().invoke(main, ["--db", db_url, "reduce", "--type", "dark", "--serial"], env=env)
    assert result.exit_code == 2 and "works on lights" in result.output
    light = CliRunner().invoke(main, ["--db", db_url, "reduce", "--type", "light", "--serial"], env=env)
    assert light.exit_code == 0 and "nothing to reduce" in light.output


def _frame_id(engine, tmp_path) -> int:
    from archive.ingest.ingest import ingest_paths

    path = write_fits(tmp_path / "lights" / "m31.fits", nina_header("LIGHT"), seed=1)
    ingest_paths(engine, [path])
    with session_scope(engine) as session:
        return session.scalar(select(Frame.id))


def test_two_runs_never_both_claim_one_product(db_url, tmp_path, monkeypatch):
    """Run A claims a fingerprint and holds its transaction open; run B asks for the same one
    meanwhile: B's insert of the same fingerprint waits for A's commit, then B sees A's live
    claim and skips (no second row)."""
    engine = open_catalogue(db_url)
    try:
        light = _frame_id(engine, tmp_path)
        # A is "another process": its claim names our parent, which is alive
        monkeypatch.setattr(provenance, "_claimant", lambda: (provenance.socket.gethostname(), os.getppid()))
        claimed = threading.Event()
        results: dict[str, object] = {}

        def run_a():
            with session_scope(engine, write=True) as session:
                results["a"] = start_reduction(session, "calibrate", "f" * 64, {}, None, [(light, "light")]).id
                claimed.set()
                time.sleep(1.0)

        thread = threading.Thread(target=run_a)
        thread.start()
        claimed.wait(10)
        with session_scope(engine, write=True) as session:
            results["b"] = start_reduction(session, "calibrate", "f" * 64, {}, None, [(light, "light")])
        thread.join()
        assert results["b"] is None
        with session_scope(engine) as session:
            assert session.scalar(select(func.count()).select_from(Reduction)) == 1
    finally:
        engine.dispose()


def test_done_is_never_redone_and_a_dead_claim_is_taken_up(db_url, tmp_path, monkeypatch):
    engine = open_catalogue(db_url)
    try:
        light = _frame_id(engine, tmp_path)
        # a run on this host that is gone (no such process) left its row running
        monkeypatch.setattr(provenance, "_claimant", lambda: (provenance.socket.gethostname(), 999999999))
        with session_scope(engine, write=True) as session:
            first = start_reduction(session, "stack", "a" * 64, {}, None, [(light, "input")]).id
        monkeypatch.undo()
        with session_scope(engine, write=True) as session:
            again = start_reduction(session, "stack", "a" * 64, {"x": 1}, None, [(light, "input")])
            assert again.id == first and again.parameters == {"x": 1}
            finish_reduction(session, again.id)
        with session_scope(engine, write=True) as session:
            assert start_reduction(session, "stack", "a" * 64, {}, None, [(light, "input")]) is None
        # a claim from another host cannot be checked here: left to that host
        monkeypatch.setattr(provenance, "_claimant", lambda: ("elsewhere", 1))
        with session_scope(engine, write=True) as session:
            start_reduction(session, "stack", "b" * 64, {}, None, [(light, "input")])
        monkeypatch.undo()
        with session_scope(engine, write=True) as session:
            assert start_reduction(session, "stack", "b" * 64, {}, None, [(light, "input")]) is None
    finally:
        engine.dispose()


def test_pool_workers_of_a_killed_run_exit():
    """SIGKILL a process holding a reduction pool: its idle workers end within seconds instead
    of waiting for a next task for ever (archive.files.exit_with_parent)."""
    import signal
    import subprocess
    import sys

    from archive.files import process_alive

    code = ("import os, sys, time\n"
            "from archive.reduce.executor import make_executor\n"
            "pool = make_executor('process', 2)\n"
            "print(*{f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}, flush=True)\n"
            "time.sleep(600)\n")
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in run.stdout.readline().split()]
    assert workers and all(process_alive(pid) for pid in workers)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 20
    while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(pid) for pid in workers)
