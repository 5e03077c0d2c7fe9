"""Projects on both backends, with real files: the ARCSAT night from ../shared/data, and a
SYNTHETIC multi-night CMOS set written here (N.I.N.A.-style headers: M 31 in L, R and Ha over
three nights, a .fits.gz copy of one exposure, a night copied to a second folder, and
external masters with IMAGETYP 'Master Dark'/'Master Flat' as PixInsight writes them).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from archive.cli import main
from archive.config import Settings
from archive.db import Copy, session_scope
from archive.errors import DestinationBusyError, ProjectError
from archive.gather.config import load_gather_config
from archive.gather.destination import hold_destination
from archive.gather.projects import (
    collect_project, create_project, parse_duration, parse_goals, project_status,
)
from archive.ingest.ingest import ingest_paths
from tests.factories import nina_header, write_fits

CONFIG = load_gather_config(Settings())  # the package defaults (configs/copyback.toml), no user file


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.fit*") if p.is_file())


def night(root: Path, n: int, filters=("L", "R", "Ha"), per_filter: int = 2) -> Path:
    """SYNTHETIC: one night of M 31 lights, 120 s, ``per_filter`` per filter."""
    day = f"2026-11-{18 + n:02d}"
    folder = root / f"night{n}"
    for f, filt in enumerate(filters):
        for k in range(per_filter):
            minute = 10 * f + 2 * k
            write_fits(folder / f"M31_{filt}_{k}.fits", nina_header(
                OBJECT="M 31" if n % 2 else "M31", FILTER=filt,
                **{"DATE-OBS": f"{day}T22:{minute:02d}:00.000", "DATE-LOC": f"{day}T23:{minute:02d}:00.000"}),
                seed=1000 * n + 10 * f + k)
    return folder


def masters(root: Path) -> Path:
    """SYNTHETIC external masters: a 120 s dark and flats in L and R (none in Ha)."""
    folder = root / "masters"
    write_fits(folder / "MasterDark_120s.fits",
               nina_header("Master Dark", OBJECT="", FILTER="", **{"DATE-OBS": "2026-11-19T12:00:00"}), seed=1)
    for i, filt in enumerate(("L", "R")):
        write_fits(folder / f"MasterFlat_{filt}.fits",
                   nina_header("Master Flat", OBJECT="", FILTER=filt, EXPTIME=2.0, EXPOSURE=2.0,
                               **{"DATE-OBS": f"2026-11-19T12:0{i + 1}:00"}), seed=2 + i)
    return folder


@pytest.fixture
def m31(engine, tmp_path):
    raw = tmp_path / "raw"
    n1, n2 = night(raw, 1), night(raw, 2)
    ingest_paths(engine, [n1, n2, masters(raw)])
    # a compressed copy of one exposure and night 1 copied again elsewhere, ingested later
    with gzip.open(raw / "M31_L_0.fits.gz", "wb") as out:
        out.write((n1 / "M31_L_0.fits").read_bytes())
    shutil.copytree(n1, raw / "backup" / "night1")
    later = ingest_paths(engine, [raw / "M31_L_0.fits.gz", raw / "backup"])
    assert later.duplicates == 1 and later.new_copies == 6
    with session_scope(engine, write=True) as session:
        create_project(session, "m31", target="m 31", folder=tmp_path / "projects" / "m31",
                       filters=["L", "R", "G", "B", "Ha"], goals=parse_goals(["Ha=1h", "L=0.1h"]))
    return raw


def test_parse_goals():
    assert parse_duration("10h") == 36000 and parse_duration("90m") == 5400 and parse_duration("30") == 30
    assert parse_goals(["Ha=1.5h", "L=45m"]) == {"Ha": 5400.0, "L": 2700.0}
    with pytest.raises(ValueError):
        parse_goals(["Ha"])
    with pytest.raises(ValueError):
        parse_duration("ten hours")


def test_status_counts_usable_integration_and_gap(engine, m31):
    status = project_status(engine, "m31", config=CONFIG).set_index("filter")
    assert list(status.index) == ["L", "R", "G", "B", "Ha"]
    assert status.loc["L", "frames"] == 4 and status.loc["L", "nights"] == 2 and status.loc["L", "duplicates"] == 1
    assert status.loc["L", "total_h"] == pytest.approx(4 * 120 / 3600, abs=1e-3)
    assert status.loc["L", "usable_h"] == status.loc["L", "total_h"] and status.loc["L", "gap_h"] == 0
    assert status.loc["Ha", "usable_h"] == 0 and status.loc["Ha", "gap_h"] == 1.0  # no Ha flat
    assert "flat: 4" in status.loc["Ha", "missing"]
    assert status.loc["G", "frames"] == 0 and status.loc["R", "collected"] == 0


def test_collect_layout_masters_super_luminance_and_new_night(engine, m31, tmp_path):
    root = tmp_path / "projects" / "m31"
    first = collect_project(engine, "m31", super_luminance=True, config=CONFIG)
    assert first.ok, first.lines()
    for filt in ("L", "R", "Ha"):
        assert len(files(root / "lights" / filt)) == 4
        assert all(f.name.endswith(".fits") for f in files(root / "lights" / filt))  # not the .gz duplicate
    assert sorted(f.name.split("_")[0] for f in files(root / "masters" / "L")) == ["master", "master"]
    assert len(files(root / "masters" / "L")) == 2 and len(files(root / "masters" / "Ha")) == 1  # dark only
    assert first.missing_masters["Ha"]["flat"] == 4
    listed = (root / "superlum.txt").read_text().split()
    assert len(listed) == 8 and all("/lights/L/" in p or "/lights/R/" in p for p in listed)
    assert not list(root.glob(".*.part"))  # the list went through a temporary name
    before = {f: sha(f) for f in files(root)}

    # a new night: collecting again adds only its frames
    ingest_paths(engine, [night(m31, 3, filters=("L", "Ha"), per_filter=3)])
    second = collect_project(engine, "m31", config=CONFIG)
    assert second.lights["L"].copied == 3 and second.lights["L"].present == 4
    assert second.lights["Ha"].copied == 3 and second.lights["R"].copied == 0
    after = {f: sha(f) for f in files(root)}
    assert all(after[f] == h for f, h in before.items())  # nothing overwritten
    assert len(after) == len(before) + 6
    third = collect_project(engine, "m31", config=CONFIG)
    assert sum(s.copied for s in third.lights.values()) == 0 and sum(s.copied for s in third.masters.values()) == 0
    status = project_status(engine, "m31", config=CONFIG).set_index("filter")
    assert status.loc["L", "collected"] == 7 and status.loc["L", "nights"] == 3
    with session_scope(engine) as session:
        recorded = set(session.scalars(select(Copy.path).where(Copy.is_current, Copy.path.startswith(str(root)))))
    assert recorded == {str(f) for f in files(root)}


def test_arcsat_project_without_masters(engine, arcsat_night, tmp_path):
    ingest_paths(engine, [arcsat_night])
    with session_scope(engine, write=True) as session:
        create_project(session, "xo1", target="XO1 b", folder=tmp_path / "xo1", filters=["z"])
        with pytest.raises(ProjectError):
            create_project(session, "xo1", target="x", folder=tmp_path / "x")
    summary = collect_project(engine, "xo1", config=CONFIG)
    assert summary.lights["z"].copied == 16 and len(files(tmp_path / "xo1" / "lights" / "z")) == 16
    status = project_status(engine, "xo1", config=CONFIG).set_index("filter")
    # raw calibrations not made into masters: the library holds no master of the instrument, so
    # it requires none ('available', configs/matching) and its lights are usable, as calibration
    # would take them (uncalibrated) -- one rule for both
    assert status.loc["z", "frames"] == 16 and status.loc["z", "missing"] == ""
    assert status.loc["z", "usable_h"] == status.loc["z", "total_h"] == pytest.approx(16 / 60, abs=1e-3)


def test_cli_project(db_url, arcsat_night, tmp_path):
    runner = CliRunner()
    db = ["--db", db_url, "-q"]
    assert runner.invoke(main, [*db, "ingest", str(arcsat_night)]).exit_code == 0
    result = runner.invoke(main, [*db, "project", "create", "xo1", "--target", "XO1-b", "--filters", "z",
                                  "--goal", "z=1h", "--dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*db, "project", "collect", "xo1", "--dry-run"])
    assert result.exit_code == 0 and "would copy 16 light(s)" in result.output and not (tmp_path / "p").exists()
    result = runner.invoke(main, [*db, "project", "collect", "xo1"])
    assert result.exit_code == 0 and "copied 16 light(s)" in result.output
    result = runner.invoke(main, [*db, "project", "status", "xo1", "--format", "csv"])
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith("z,16,1,")
    result = runner.invoke(main, [*db, "project", "status", "nope"])
    assert result.exit_code == 1 and "no project named 'nope'" in result.output
    result = runner.invoke(main, [*db, "project", "create", "bad", "--target", "x", "--goal", "Ha"])
    assert result.exit_code == 2
    assert "xo1" in runner.invoke(main, [*db, "project", "list"]).output


def test_a_master_flagged_bad_makes_its_lights_unusable(engine, m31):
    from archive.calib.library import mark_bad
    from archive.db import Frame

    with session_scope(engine, write=True) as session:
        flat_l = session.scalar(select(Frame.id).where(Frame.image_type == "master_flat", Frame.filter_name == "L"))
        mark_bad(session, [flat_l], "dust donut")
    status = project_status(engine, "m31", config=CONFIG).set_index("filter")
    assert status.loc["L", "usable_h"] == 0 and status.loc["L", "missing"] == "flat: 4"
    assert status.loc["L", "gap_h"] == 0.1 and status.loc["R", "usable_h"] > 0


def test_arcsat_with_masters_built_by_the_library(engine, arcsat_night, tmp_path):
    """The real ARCSAT calibrations made into masters (archive.calib): every light is usable and
    its bias, dark and flat are collected beside the lights (the bias also because the master
    dark was made bias-subtracted with it)."""
    from archive.calib.masters import build_masters

    ingest_paths(engine, [arcsat_night])
    built = build_masters(engine, library=tmp_path / "library")
    with session_scope(engine, write=True) as session:
        create_project(session, "xo1", target="XO1-b", folder=tmp_path / "xo1", filters=["z"], goals={"z": 3600.0})
    summary = collect_project(engine, "xo1", config=CONFIG)
    assert summary.ok and not summary.missing_masters, (built, summary.lines())
    assert sorted(f.name.split("_")[1] for f in files(tmp_path / "xo1" / "masters" / "z")) == ["bias", "dark", "flat"]
    status = project_status(engine, "xo1", config=CONFIG).set_index("filter")
    assert status.loc["z", "usable_h"] == status.loc["z", "total_h"] == pytest.approx(16 / 60, abs=1e-3)
    assert status.loc["z", "gap_h"] == pytest.approx(1 - 16 / 60, abs=1e-3) and status.loc["z", "collected"] == 16


def test_super_luminance_of_a_project_without_filters(engine, m31, tmp_path):
    """A project created without --filters collects every filter found; its super-luminance
    list holds the L and R lights collected (not none, as when it looped over the project's
    empty filter list)."""
    root = tmp_path / "projects" / "all"
    with session_scope(engine, write=True) as session:
        create_project(session, "m31-all", target="M31", folder=root)
    summary = collect_project(engine, "m31-all", super_luminance=True, config=CONFIG)
    assert summary.ok and sorted(summary.lights) == ["Ha", "L", "R"]
    listed = (root / "superlum.txt").read_text().split()
    assert sorted(listed) == sorted(str(f) for f in files(root / "lights" / "L") + files(root / "lights" / "R"))
    assert len(listed) == 8 and summary.super_luminance_count == 8
    assert "super-luminance: 8 light(s) listed" in "\n".join(summary.lines())


def test_two_collects_at_once_copy_each_exposure_once(engine, m31, tmp_path, caplog):
    """Two threads collect the project at once: the test holds the project folder's lock until
    both wait for it, then lets them go; each exposure and master is copied once."""
    root = tmp_path / "projects" / "m31"
    results, errors = [], []

    def run():
        try:
            results.append(collect_project(engine, "m31", config=CONFIG))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="archive.gather.destination"):
        with hold_destination(root):
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while sum("waiting for it to finish" in r.getMessage() for r in caplog.records) < 2:
                assert time.monotonic() < deadline, "the collects never waited for the lock"
                time.sleep(0.02)
        for t in threads:
            t.join(120)
    assert not errors and len(results) == 2
    lights = sorted(sum(s.copied for s in r.lights.values()) for r in results)
    masters = sorted(sum(s.copied for s in r.masters.values()) for r in results)
    assert lights == [0, 12] and masters == [0, 5]  # a dark each filter, flats for L and R
    assert len(files(root / "lights")) == 12 and len({sha(f) for f in files(root / "lights")}) == 12
    with session_scope(engine) as session:
        recorded = set(session.scalars(select(Copy.path).where(Copy.is_current, Copy.path.startswith(str(root)))))
    assert recorded == {str(f) for f in files(root)}


def test_a_busy_project_folder_is_said_clearly(db_url, engine, m31, tmp_path):
    root = tmp_path / "projects" / "m31"
    with hold_destination(root):
        with pytest.raises(DestinationBusyError, match=f"process {os.getpid()}"):
            collect_project(engine, "m31", config=CONFIG, lock_timeout_s=0)
        result = CliRunner().invoke(main, ["--db", db_url, "-q", "project", "collect", "m31", "--no-wait"])
        assert result.exit_code == 1 and "is writing into" in result.output
        assert collect_project(engine, "m31", config=CONFIG, dry_run=True).lights["L"].copied == 4  # no lock
    assert not files(root)
    assert collect_project(engine, "m31", config=CONFIG, lock_timeout_s=0).lights["L"].copied == 4
