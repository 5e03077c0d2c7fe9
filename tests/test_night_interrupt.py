"""Interrupting ``archive night``: the real installed command, killed with SIGKILL at several
points (during master building, calibration, registration); the next run completes and
leaves no partial file and no duplicate row. Both backends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from archive.db.models import Copy, Frame, Reduction, ReductionInput
from archive.db.session import open_catalogue, session_scope
from tests.conftest import SHARED_DATA, catalogue_url

NIGHT = SHARED_DATA / "arcsat-uw-astr480" / "data" / "20250601"
ARCHIVE = [sys.executable, "-m", "archive.cli"] if not shutil.which("archive") else [shutil.which("archive")]


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue(request, tmp_path):
    with catalogue_url(request, tmp_path) as url:
        yield url


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.rglob(pattern))) if folder.exists() else 0


def _run(command, env, kill_when=None, timeout=300.0) -> int | None:
    """Run ``command``; when ``kill_when()`` turns true, SIGKILL its whole process group."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("archive night did not finish in time")
    return proc.returncode


def test_killed_night_is_completed_by_the_next_run(catalogue, tmp_path):
    root = tmp_path / "imaging"
    shutil.copytree(NIGHT, root / "20250601")
    library, products = tmp_path / "masters", tmp_path / "reduced"
    config = tmp_path / "config.toml"
    config.write_text(f'[masters]\nlibrary = "{library}"\n')
    env = {**os.environ, "ARCHIVE_CONFIG": str(config)}
    command = ARCHIVE + ["-q", "--db", catalogue, "night", "20250601", "--root", str(root), "--output", str(products),
                         "--workers", "2"]
    kill_points = [
        lambda: _count(library, "*.fits") >= 1,  # during master building
        lambda: _count(products, "*_cal.fits") >= 6,  # during calibration
        lambda: _count(products, "*_reg.fits") >= 4,  # during registration
    ]
    killed = 0
    for kill_when in kill_points:
        if _run(command, env, kill_when) is None:
            killed += 1
    assert killed >= 2  # the runs really were interrupted, at least twice
    assert _run(command, env) == 0
    assert not list(tmp_path.rglob(".*.part")) and not list(tmp_path.rglob(".*.tmp-*"))
    engine = open_catalogue(catalogue)
    try:
        with session_scope(engine) as session:
            types = dict(session.execute(select(Frame.image_type, func.count()).group_by(Frame.image_type)).all())
            assert types == {"bias": 5, "dark": 5, "flat": 5, "light": 17, "master_bias": 1, "master_dark": 1,
                             "master_flat": 1, "master_badpix": 1, "calibrated": 17, "registered": 17, "stacked": 1}
            assert session.scalar(select(func.count()).select_from(Frame).where(
                Frame.image_type.in_(("calibrated", "registered", "stacked")), Frame.reduction_id.is_(None))) == 0
            fingerprints = session.execute(select(Reduction.fingerprint, func.count()).group_by(Reduction.fingerprint)
                                           .having(func.count() > 1)).all()
            assert fingerprints == []
            assert session.scalar(select(func.count()).select_from(Reduction).where(Reduction.status != "done")) == 0
            paths = session.execute(select(Copy.path, func.count()).where(Copy.is_current).group_by(Copy.path)
                                    .having(func.count() > 1)).all()
            assert paths == []
            # every product file on disk is catalogued once, and nothing else is there
            on_disk = {str(p) for p in list(products.rglob("*.fits")) + list(library.rglob("*.fits"))}
            catalogued = set(session.scalars(select(Copy.path).join(Frame, Frame.id == Copy.frame_id).where(
                Copy.is_current, Frame.reduction_id.is_not(None))))
            assert on_disk == catalogued
            assert session.scalar(select(func.count()).select_from(ReductionInput)) > 0
        before = {t: n for t, n in types.items()}
    finally:
        engine.dispose()
    assert _run(command, env) == 0  # and once more: nothing to do
    engine = open_catalogue(catalogue)
    try:
        with session_scope(engine) as session:
            assert dict(session.execute(select(Frame.image_type, func.count()).group_by(Frame.image_type)).all()) == before
    finally:
        engine.dispose()
