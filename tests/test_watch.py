"""``archive watch``: a folder filled file by file, one file written slowly, is processed once
after it settles and never half-written; stopping (in-process, and SIGTERM to the real
command) and restarting loses nothing and does nothing twice. Both backends.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from archive.config import load_settings
from archive.db.models import Copy, Frame, IngestProblem, IngestRun, Reduction
from archive.db.session import open_catalogue, session_scope
from archive.reduce.config import load_reduction_config
from archive.workflows.watch import SequenceTracker, Watcher
from tests.factories import nina_header, write_fits

ARCHIVE = [sys.executable, "-m", "archive.cli"]
SETTLE_S = 1.0
#: kind -> (EXPTIME s, pixel level ADU): enough for masters that calibrate the lights
KINDS = {"BIAS": (0.0, 500.0), "DARK": (120.0, 600.0), "FLAT": (1.0, 20000.0), "LIGHT": (120.0, 3000.0)}


def _frame(path: Path, kind: str, i: int, night: str = "2026-11-20") -> Path:
    exposure, level = KINDS[kind]
    header = nina_header(kind, EXPTIME=exposure, EXPOSURE=exposure, **{"DATE-OBS": f"{night}T22:{i:02d}:{len(kind):02d}"})
    return write_fits(path, header, shape=(32, 32), value=level, seed=i * 10 + len(kind) + int(night[-2:]))


def _fill(folder: Path, kinds=("BIAS", "DARK", "FLAT", "LIGHT"), n: int = 3, start: int = 0, gap_s: float = 0.1,
          night: str = "2026-11-20") -> list[Path]:
    """Write the folder's frames one by one, ``gap_s`` apart (less than the settle time)."""
    written = []
    for i in range(start, start + n):
        for kind in kinds:
            written.append(_frame(folder / f"{kind}_{i:03d}.fits", kind, i, night))
            time.sleep(gap_s)
    return written


def _write_slowly(path: Path, data: bytes, chunks: int = 6, pause_s: float = 0.5) -> None:
    """Append ``data`` to ``path`` in ``chunks`` pieces, ``pause_s`` apart (< the settle time)."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start:start + step])
            fh.flush()
            time.sleep(pause_s)


def _setup(db_url: str, tmp_path: Path):
    root = tmp_path / "imaging"
    root.mkdir()
    settings = load_settings({"database": {"url": db_url}, "masters": {"library": str(tmp_path / "masters")}})
    config = load_reduction_config(settings, {"night": {"imaging_root": str(root)},
                                              "output": {"root": str(tmp_path / "reduced")}})
    return root, settings, config


class _Running:
    """A watcher in a thread, with the lines it reported."""

    def __init__(self, engine, root, settings, config, poll=False, progress=None):
        self.lines: list[str] = []
        self.watcher = Watcher(engine, root, settle_s=SETTLE_S, poll=poll, config=config, settings=settings,
                               report=self.lines.append, tick_s=0.2, progress=progress)
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.watcher.summary.sequences) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(self.watcher.summary.sequences)} of {n} sequence(s) processed: {self.lines}")
            time.sleep(0.05)

    def stop(self):
        self.watcher.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.watcher.summary


def _counts(engine) -> dict[str, int]:
    with session_scope(engine) as session:
        return {
            "runs": session.scalar(select(func.count()).select_from(IngestRun)),
            "raw": session.scalar(select(func.count()).select_from(Frame).where(Frame.reduction_id.is_(None))),
            "copies": session.scalar(select(func.count()).select_from(Copy)),
            "reductions": session.scalar(select(func.count()).select_from(Reduction)),
            "calibrations": session.scalar(select(func.count()).select_from(Reduction).where(
                Reduction.step == "calibrate", Reduction.status == "done")),
            "problems": session.scalar(select(func.count()).select_from(IngestProblem).where(
                IngestProblem.severity == "error")),
        }


def test_tracker_holds_back_a_folder_whose_file_still_changes():
    now = [0.0]
    tracker = SequenceTracker(settle_s=5.0, clock=lambda: now[0])
    assert tracker.see("/r/a/1.fits", 100, 1) and tracker.see("/r/a/b/2.fits", 100, 1)
    now[0] = 4.0
    tracker.see("/r/a/b/2.fits", 200, 2)  # still growing
    now[0] = 6.0
    assert tracker.settled("/r/a/b") is False and tracker.settled("/r/a") is False  # a sub-folder holds back its parent
    now[0] = 9.0
    assert tracker.settled("/r/a") and tracker.folders() == ["/r/a", "/r/a/b"]
    tracker.processed("/r/a", {"/r/a/1.fits": (100, 1), "/r/a/b/2.fits": (200, 2)})
    assert tracker.folders() == [] and not tracker.see("/r/a/b/2.fits", 200, 2)
    assert tracker.see("/r/a/b/2.fits", 300, 3)  # changed again: pending again


def test_slow_file_is_never_ingested_half_written_and_the_sequence_runs_once(db_url, tmp_path):
    root, settings, config = _setup(db_url, tmp_path)
    engine = open_catalogue(db_url)
    running = _Running(engine, root, settings, config)
    try:
        folder = root / "2026-11-20"
        written = _fill(folder)
        full = _frame(tmp_path / "elsewhere" / "LIGHT_slow.fits", "LIGHT", 9).read_bytes()
        slow = folder / "LIGHT_slow.fits"
        writer = threading.Thread(target=_write_slowly, args=(slow, full))
        writer.start()
        while writer.is_alive():  # while it is written, nothing of the folder is ingested
            assert _counts(engine)["runs"] == 0 and not running.watcher.summary.sequences
            time.sleep(0.05)
        finished = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        running.wait_for(1)
        time.sleep(3 * SETTLE_S)  # nothing more happens
    finally:
        summary = running.stop()
    assert len(summary.sequences) == 1 and summary.sequences[0].ok, running.lines
    assert summary.sequences[0].folder == str(folder)
    counts = _counts(engine)
    assert counts["raw"] == len(written) + 1 and counts["problems"] == 0
    assert counts["calibrations"] == 4  # the 4 lights, once each
    with session_scope(engine) as session:
        copy = session.scalars(select(Copy).where(Copy.path == str(slow))).one()
        assert copy.size == len(full) == slow.stat().st_size
        raw_runs = [r for r in session.scalars(select(IngestRun)) if r.roots == [str(folder)]]
        assert len(raw_runs) == 1 and raw_runs[0].started_at >= finished - dt.timedelta(seconds=0.5)
    assert len(running.lines) == 1 and "4 light(s), 4 calibrated" in running.lines[0], running.lines
    engine.dispose()


def _products(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Copy).join(Frame, Frame.id == Copy.frame_id)
                              .where(Frame.reduction_id.is_not(None)))


class _StopDuring:
    """A progress hook that stops the watcher when a step named ``label`` starts."""

    def __init__(self, label: str):
        self.label, self.watcher = label, None

    def start(self, total: int, description: str) -> None:
        if description.startswith(self.label) and self.watcher is not None:
            self.watcher.stop()

    def advance(self, steps: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def test_stop_and_restart_lose_nothing_and_do_nothing_twice(db_url, tmp_path):
    root, settings, config = _setup(db_url, tmp_path)
    engine = open_catalogue(db_url)
    night_a, night_b = root / "2026-11-20", root / "2026-11-21"
    # 1. stopped during the ingest of the first sequence: the chain stops after the ingest step
    hook = _StopDuring("reading headers")
    running = _Running(engine, root, settings, config, progress=hook)
    hook.watcher = running.watcher
    _fill(night_a)
    running.wait_for(1)
    summary = running.stop()
    assert summary.stopped and summary.sequences[0].night.stopped_before == "solve", running.lines
    assert "stopped before solve" in running.lines[-1]
    first = _counts(engine)
    assert first["raw"] == 12 and first["reductions"] == 0
    # 2. while it is down: more lights in the first folder, a new folder
    _fill(night_a, kinds=("LIGHT",), n=2, start=3)
    _fill(night_b, night="2026-11-21")
    # 3. restarted (polling this time): the stopped chain is completed, what arrived is taken up
    running = _Running(engine, root, settings, config, poll=True)
    running.wait_for(2)
    time.sleep(3 * SETTLE_S)
    summary = running.stop()
    assert sorted(s.folder for s in summary.sequences) == [str(night_a), str(night_b)], running.lines
    assert all(s.ok for s in summary.sequences), running.lines
    second = _counts(engine)
    assert second["raw"] == 12 + 2 + 12 and second["problems"] == 0
    assert second["calibrations"] == 5 + 3  # every light once: none twice, none lost
    assert second["runs"] == first["runs"] + 3 + 3  # per folder: its ingest, its masters, its products
    with session_scope(engine) as session:
        # per night its master bias, dark, flat and bad-pixel mask, each made once
        assert session.scalar(select(func.count()).select_from(Reduction).where(Reduction.step.like("master%"))) == 8
    assert not list((tmp_path / "reduced" / ".watch").glob("*.json"))  # the journal is empty again
    # 4. restarted with nothing new: nothing is done
    running = _Running(engine, root, settings, config)
    time.sleep(4 * SETTLE_S)
    summary = running.stop()
    assert summary.sequences == [] and _counts(engine) == second
    engine.dispose()


def test_sigterm_stops_the_command_cleanly_and_a_missing_root_is_waited_for(db_url, tmp_path):
    root = tmp_path / "imaging"  # not there yet
    config = tmp_path / "config.toml"
    config.write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {**os.environ, "ARCHIVE_CONFIG": str(config)}
    proc = subprocess.Popen(ARCHIVE + ["--db", db_url, "watch", str(root), "--settle", str(SETTLE_S), "--serial",
                                       "--output", str(tmp_path / "reduced")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("waiting for it" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.1)
        _fill(root / "2026-11-20", kinds=("BIAS",), n=3)
        (root / "2026-11-20" / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
        while not any("2026-11-20:" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    text = "".join(lines)
    assert text.count("waiting for it") == 1, text
    assert "watch stopped: 1 sequence(s) processed (4 file(s))" in text, text
    engine = open_catalogue(db_url)
    counts = _counts(engine)
    assert counts["raw"] == 3 and counts["problems"] == 1  # the bad file is a problem; the watch went on
    engine.dispose()


def test_lights_waiting_for_masters_are_calibrated_when_the_masters_arrive_even_after_a_restart(db_url, tmp_path):
    root, settings, config = _setup(db_url, tmp_path)
    engine = open_catalogue(db_url)
    journal_dir = tmp_path / "reduced" / ".watch"
    # 1. old darks (two months before): the library holds darks, so the lights require one
    running = _Running(engine, root, settings, config)
    _fill(root / "2026-09-20", kinds=("DARK",), night="2026-09-20")
    running.wait_for(1)
    # 2. lights with no dark within max_age_days: left uncalibrated, kept waiting in the journal
    lights = root / "2026-11-20" / "lights"
    _fill(lights, kinds=("LIGHT",))
    running.wait_for(2)
    summary = running.stop()
    assert not summary.sequences[1].ok and _counts(engine)["calibrations"] == 0, running.lines
    journal = json.loads(next(journal_dir.glob("*.json")).read_text())
    assert list(journal["waiting"]) == [str(lights)] and len(journal["waiting"][str(lights)]["lights"]) == 3
    # 3. restarted; the night's darks arrive in another folder: a master is built, the lights are tried again
    running = _Running(engine, root, settings, config)
    time.sleep(2 * SETTLE_S)
    assert running.watcher.summary.sequences == []  # nothing changed: nothing is retried
    _fill(root / "2026-11-20" / "darks", kinds=("DARK",))
    running.wait_for(2)
    time.sleep(3 * SETTLE_S)
    summary = running.stop()
    assert [s.folder for s in summary.sequences] == [str(root / "2026-11-20" / "darks"), str(lights)], running.lines
    assert summary.sequences[1].ok and any("waiting for masters" in line for line in running.lines), running.lines
    assert _counts(engine)["calibrations"] == 3
    assert not list(journal_dir.glob("*.json"))  # nothing waits any more
    engine.dispose()


def test_a_retry_that_breaks_is_tried_once_per_change_of_the_library(db_url, tmp_path, monkeypatch):
    """Lights waiting for masters are tried again once per change of the master library: a run
    that raises (and so records nothing) used to be forced again at every look."""
    import archive.workflows.watch as watch_module

    root, settings, config = _setup(db_url, tmp_path)
    engine = open_catalogue(db_url)
    lights = root / "2026-11-20" / "lights"
    lights.mkdir(parents=True)
    calls = []

    def broken_night(*args, folders, **kwargs):
        calls.append(folders)
        raise RuntimeError("the catalogue went away")

    monkeypatch.setattr(watch_module, "run_night", broken_night)
    running = _Running(engine, root, settings, config)
    journal = running.watcher.journal
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"root": str(root), "folders": [],
                                   "waiting": {str(lights): {"lights": [1, 2], "library": [99, 99]}}}))
    running.watcher._waiting = None  # noqa: SLF001 - read the journal written after the start
    running.wait_for(1)
    time.sleep(4 * SETTLE_S)  # 20 looks at the tick of 0.2 s
    summary = running.stop()
    assert calls == [[lights]], running.lines
    assert [s.folder for s in summary.sequences] == [str(lights)] and "the catalogue went away" in summary.sequences[0].error
    with session_scope(engine) as session:
        from archive.calib.library import library_state

        state = list(library_state(session))
    assert json.loads(journal.read_text())["waiting"][str(lights)]["library"] == state  # tried with this library
    engine.dispose()
