"""Plate solving with astrometry.net's solve-field and the Tycho-2 index files, both backends.

The Seestar S50 lights of M 94 carry no WCS (fields of 0.72 x 1.27 deg). The solver and its
index files are installed by .ci/run (Debian packages astrometry.net, astrometry-data-tycho2):
these tests FAIL when they are missing. The pointing keywords (RA/DEC) of this Seestar are
about 17 arcmin off the object it centred on, so the solved centres are compared with M 94's
catalogued position (a few arcmin) and with the pointing (within 20 arcmin).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import angular_separation
from click.testing import CliRunner
from sqlalchemy import select

from archive.cli import main
from archive.config import Settings
from archive.db.frames import FrameFilter, frame_query
from archive.db.models import Footprint, Frame, Reduction, ReductionInput
from archive.db.session import session_scope
from archive.ingest.ingest import ingest_paths
from archive.ingest.sky_config import SkyConfig
from archive.reduce.solve import SolverNotFoundError, solve_frames, solver_path
from tests.conftest import SHARED_DATA

SESSION = SHARED_DATA / "seestar-s50-m94" / "session2"
M94_POS = (192.72108333, 41.12044444)


def _arcmin(ra1, dec1, ra2, dec2) -> float:
    return float(np.degrees(angular_separation(*np.radians([ra1, dec1, ra2, dec2]))) * 60.0)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_solver_and_tycho2_index_files_are_installed():
    assert solver_path() is not None, "solve-field missing: apt-get install astrometry.net astrometry-data-tycho2"
    assert list(Path("/usr/share/astrometry").glob("index-tycho2-08*")), "astrometry-data-tycho2 is not installed"


def test_seestar_lights_are_solved_near_m94_with_provenance(engine, tmp_path):
    folder = tmp_path / "session2"
    shutil.copytree(SESSION, folder)
    before = {p.name: _sha(p) for p in folder.iterdir()}
    ingest_paths(engine, [folder])
    summary = solve_frames(engine, FrameFilter(folder=folder))
    assert summary.failed == [] and len(summary.solved) == 6
    assert {p.name: _sha(p) for p in folder.iterdir()} == before  # raw files never modified
    with session_scope(engine) as session:
        rows = session.execute(select(Frame, Footprint).join(Footprint, Footprint.frame_id == Frame.id)).all()
        assert len(rows) == 6
        for frame, footprint in rows:
            assert footprint.source == "solved"
            assert _arcmin(footprint.ra_deg, footprint.dec_deg, *M94_POS) < 5.0
            assert _arcmin(footprint.ra_deg, footprint.dec_deg, frame.ra_deg, frame.dec_deg) < 20.0
            assert footprint.pixel_scale_arcsec == pytest.approx(2.39, rel=0.02)  # 2.9 um at 250 mm
            assert "CTYPE1" in footprint.wcs_header
            reduction = session.get(Reduction, footprint.reduction_id)
            assert (reduction.step, reduction.status) == ("solve", "done")
            assert reduction.software.get("astrometry.net")
            assert reduction.parameters["scale_arcsec"] == pytest.approx(2.3927, rel=1e-3)
            inputs = session.execute(select(ReductionInput.frame_id, ReductionInput.role).where(
                ReductionInput.reduction_id == reduction.id)).all()
            assert inputs == [(frame.id, "light")]
        # the solved footprints (rotated by about 112 deg) contain M 94
        assert len(session.scalars(frame_query(FrameFilter(covers=M94_POS), Frame.id)).all()) == 6
    again = solve_frames(engine, FrameFilter(folder=folder))
    assert (again.solved, again.failed) == ([], [])  # nothing left without a WCS


def test_a_missing_solver_is_an_error_and_the_night_says_so(engine, tmp_path):
    folder = tmp_path / "session2"
    shutil.copytree(SESSION, folder)
    ingest_paths(engine, [folder])
    missing = SkyConfig(solver="no-such-solve-field-here")
    with pytest.raises(SolverNotFoundError, match="apt-get install astrometry.net"):
        solve_frames(engine, FrameFilter(folder=folder), config=missing)
    with session_scope(engine) as session:
        sources = set(session.scalars(select(Footprint.source)))
    assert sources == {"estimated"}  # what the frames had, kept

    from archive.workflows.night import NightSummary, _solve, FolderResult

    summary = NightSummary(searches=["session2"])
    results = {folder: FolderResult(str(folder))}
    from archive.ingest.sky_config import load_sky_config

    settings = Settings(raw={"sky": {"solve": {"command": "no-such-solve-field-here"}}})
    _solve(engine, results, settings, load_sky_config(settings), summary)
    assert len(summary.notes) == 1 and "6 light(s)" in summary.notes[0] and "not installed" in summary.notes[0]
    assert results[folder].ok


def test_cli_solve_on_a_narrow_field_does_not_try(engine, db_url, tmp_path):
    """ARCSAT's 11 arcmin fields are narrower than the Tycho-2 index files: not tried, exit 0."""
    night = SHARED_DATA / "arcsat-uw-astr480" / "data" / "20250601"
    ingest_paths(engine, [night])
    result = CliRunner().invoke(main, ["--db", db_url, "-q", "solve"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 frame(s) solved" in result.output and "too narrow" in result.output
    with session_scope(engine) as session:
        assert session.scalars(select(Reduction).where(Reduction.step == "solve")).all() == []
