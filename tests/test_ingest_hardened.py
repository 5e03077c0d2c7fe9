"""Ingest under bad conditions (issue 13): a full disk, a read-only catalogue, values the
database refuses, paths the walk cannot read, killed runs, concurrent writers and Ctrl-C to
the main process alone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from archive.db import Copy, Frame, IngestProblem, IngestRun, session_scope
from archive.db.base import utcnow
from archive.db.session import open_catalogue
from archive.ingest import ingest_paths
from archive.ingest.dialects import DialectSet
from archive.ingest.headers import read_fits
from archive.ingest.catalogue import write_with_retry
from archive.ingest.runs import IngestStoppedError, IngestSummary, run_state
from archive.config import load_settings


def test_a_full_disk_stops_the_ingest_in_one_line_and_keeps_what_was_committed(tmp_path, arcsat_night):
    """SQLite's own limit on the file's pages (PRAGMA max_page_count) is a real 'disk full'."""
    path = tmp_path / "c.sqlite"
    open_catalogue(path).dispose()
    pages = os.path.getsize(path) // 4096
    engine = open_catalogue(path)

    @event.listens_for(engine, "connect")
    def _limit(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 40}")

    engine.dispose()  # connections from now on have the limit
    settings = load_settings({"ingest": {"workers": 1, "batch_size": 2}})
    with pytest.raises(IngestStoppedError) as stopped:
        ingest_paths(engine, [arcsat_night], settings=settings)
    message = str(stopped.value)
    assert "\n" not in message and "full" in message and "INSERT" not in message
    assert message.lower().count("full") == 1  # said once
    summary = stopped.value.summary
    assert 0 < summary.new < 32
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == summary.new  # every committed batch kept
    engine.dispose()


def test_the_cli_prints_the_summary_before_the_one_line(tmp_path, arcsat_night):
    from tests.test_opening import run

    path = tmp_path / "c.sqlite"
    assert run("--quiet", "ingest", arcsat_night / "Bias_BIN1_20250602_032138.fits", db=path).exit_code == 0
    subprocess.run(["chattr", "+i", str(path)], check=True) if os.geteuid() == 0 else path.chmod(0o444)
    try:
        result = run("--quiet", "ingest", arcsat_night, db=path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True) if os.geteuid() == 0 else path.chmod(0o644)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines[-1].startswith("archive: error: ingest stopped: ") and "readonly" in lines[-1]
    assert sum(line.startswith("archive: error") for line in lines) == 1


def test_an_integer_the_database_refuses_names_its_column(engine, arcsat_night):
    read = read_fits(str(arcsat_night / "Bias_BIN1_20250602_032138.fits"), DialectSet())
    read.naxis = (3_000_000_000, read.naxis[1], read.naxis[2])
    with session_scope(engine, write=True) as s:
        run = IngestRun(started_at=utcnow(), host="h", software_version="t", roots=[])
        s.add(run)
        s.flush()
        run_id = run.id
    summary = IngestSummary()
    write_with_retry(engine, [read], run_id, summary)
    with session_scope(engine) as s:
        stored = s.scalar(select(Frame.naxis1))
        reason = s.scalar(select(IngestProblem.reason).where(IngestProblem.severity == "error"))
    if engine.dialect.name == "postgresql":  # refused: the reason names the column and value
        assert stored is None and "out of range" in reason and "naxis1=3000000000" in reason
    else:  # SQLite keeps 64-bit integers
        assert stored == 3_000_000_000 and reason is None


def test_paths_the_walk_cannot_read_are_recorded_once(engine, tmp_path, arcsat_night):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.fits").write_bytes((arcsat_night / "Bias_BIN1_20250602_032138.fits").read_bytes())
    (tree / "dangling.fits").symlink_to(tmp_path / "nowhere.fits")
    (tree / "loop.fits").symlink_to(tree / "loop.fits")
    for _ in range(3):
        summary = ingest_paths(engine, [tree])
        assert sorted(Path(p).name for p, _ in summary.problems) == ["dangling.fits", "loop.fits"]
    with session_scope(engine) as s:
        rows = s.scalars(select(IngestProblem.path).where(IngestProblem.severity == "error")).all()
    assert sorted(Path(p).name for p in rows) == ["dangling.fits", "loop.fits"]
    (tree / "dangling.fits").unlink()
    (tree / "dangling.fits").write_bytes((arcsat_night / "Bias_BIN1_20250602_032152.fits").read_bytes())
    assert [Path(p).name for p, _ in ingest_paths(engine, [tree]).problems] == ["loop.fits"]
    with session_scope(engine) as s:
        unresolved = s.scalars(select(IngestProblem.path).where(~IngestProblem.resolved)).all()
    assert [Path(p).name for p in unresolved] == ["loop.fits"]


def test_a_killed_run_is_reported_as_interrupted_by_the_next(engine, db_url, arcsat_night):
    command = [sys.executable, "-m", "archive.cli", "--quiet", "--db", db_url, "ingest", "--workers", "1",
               "--batch-size", "1", str(arcsat_night)]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            if s.scalar(select(func.count()).select_from(Copy)) >= 2:
                break
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    with session_scope(engine) as s:
        first = s.scalars(select(IngestRun)).one()
        assert first.finished_at is None and run_state(first) == "interrupted"
    summary = ingest_paths(engine, [arcsat_night])
    assert summary.interrupted_runs == [first.id]
    assert ingest_paths(engine, [arcsat_night]).interrupted_runs == [first.id]  # still, and only that one
    with session_scope(engine) as s:
        states = [run_state(r) for r in s.scalars(select(IngestRun).order_by(IngestRun.id))]
    assert states == ["interrupted", "finished", "finished"]


def test_concurrent_ingests_on_postgresql_do_not_clash_or_warn(engine, db_url, shared_data):
    command = [sys.executable, "-m", "archive.cli", "-v", "--db", db_url, "ingest", "--workers", "1",
               "--batch-size", "10", str(shared_data)]
    runs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    for err in errors:
        assert "pipeline aborted" not in err and "clashed" not in err and "WARNING" not in err


def _children(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found


def test_ctrl_c_to_the_main_process_alone_stops_a_pooled_ingest_within_seconds(tmp_path, shared_data):
    """SIGINT to the main process only (not its group), at a random moment once the pool is
    up, five times: each run ends within 6 s and leaves no process behind. A tree of many file
    links to the real frames keeps the pool busy long enough that waiting for the batches
    handed out (the old behaviour) takes far longer."""
    tree = tmp_path / "tree"
    files = [p for p in shared_data.rglob("*") if p.is_file() and p.name.lower().endswith((".fits", ".fit", ".fz", ".gz"))]
    for copy in range(12):
        for number, source in enumerate(files):
            link = tree / f"c{copy}" / f"{number}_{source.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    rng = random.Random(13)
    for attempt in range(5):
        db = tmp_path / f"c{attempt}.sqlite"
        open_catalogue(db).dispose()
        run = subprocess.Popen([sys.executable, "-m", "archive.cli", "--quiet", "--db", str(db), "ingest", "--workers",
                                "2", str(tree)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
        deadline = time.monotonic() + 60
        while len(_children(run.pid)) < 3 and time.monotonic() < deadline:  # the main process and 2 workers
            assert run.poll() is None, run.stderr.read()
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(run.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            run.wait(timeout=6)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            pytest.fail(f"attempt {attempt}: the ingest did not stop within 6 s of Ctrl-C")
        assert run.returncode != 0
        left = _children(run.pid)
        assert left == [], f"attempt {attempt}: processes left behind {left} ({time.monotonic() - sent:.1f} s)"


def test_a_read_only_copyback_destination_is_one_line(db_url, tmp_path, arcsat_night):
    from tests.test_opening import one_error_line, run

    assert run("--quiet", "ingest", arcsat_night, db=db_url).exit_code == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(["chattr", "+i", str(dest)], check=True) if os.geteuid() == 0 else dest.chmod(0o555)
    try:
        result = run("copyback", "--to", dest, "--type", "bias", db=db_url)
    finally:
        subprocess.run(["chattr", "-i", str(dest)], check=True) if os.geteuid() == 0 else dest.chmod(0o755)
    one_error_line(result, str(dest))
    assert list(dest.iterdir()) == []
