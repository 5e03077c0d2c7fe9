"""Copyback on both backends, with real files: the ARCSAT night and the SBIG lab set from
../shared/data, and a SYNTHETIC multi-night set (written here with astropy: N.I.N.A.-style
headers, three nights, renamed copies, .fits.gz and .fits.fz copies of exposures, a night
copied to a second folder), because the shared sets hold one night and no compressed files.
Two tests run real ``archive copyback`` processes: one killed half-way, two at once into one
folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from astropy.io import fits
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from sqlalchemy import func, select

from archive.cli import main
from archive.config import Settings
from archive.db import Copy, Frame, session_scope
from archive.errors import ConfigError, DestinationBusyError, UnsafePathError
from archive.files import safe_component, temporary_path
from archive.gather.config import GatherConfig, load_gather_config
from archive.gather.copyback import copyback
from archive.gather.destination import LOCK_NAME, hold_destination
from archive.gather.exposures import Selection, duplicate_reason
from archive.gather.naming import destination
from archive.ingest.ingest import ingest_paths
from archive.resources import resource_dir
from tests.factories import nina_header, write_fits

CONFIG = load_gather_config(Settings())  # the package defaults (configs/copyback.toml), no user file
M31 = (10.684708, 41.26875)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fits_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def partials(root: Path) -> list[Path]:
    """Temporary files (archive.files.temporary_path) under ``root``."""
    return sorted(root.rglob(".*.part"))


def synthetic_nights(root: Path) -> Path:
    """SYNTHETIC: three nights of M 31 (named 'M 31', 'M31', 'm31' on successive nights) in Ha
    and OIII, 3 exposures each; one frame named 'Andromeda' at M 31's position; one 'M 33'."""
    nights = root / "nights"
    names = ["M 31", "M31", "m31"]
    for n, day in enumerate(["2026-11-18", "2026-11-19", "2026-11-20"]):
        for k in range(3):
            for f, filt in enumerate(("Ha", "OIII")):
                header = nina_header(OBJECT=names[n], FILTER=filt, **{
                    "DATE-OBS": f"{day}T22:{10 * k + 5 * f:02d}:00.000", "DATE-LOC": f"{day}T23:{10 * k + 5 * f:02d}:00.000"})
                write_fits(nights / f"night{n}" / f"{names[n]}_{filt}_{k}.fits", header, seed=100 * n + 10 * k + f)
    write_fits(nights / "night2" / "andromeda_Ha.fits",
               nina_header(OBJECT="Andromeda", FILTER="Ha", RA=10.70, DEC=41.30, **{"DATE-OBS": "2026-11-20T23:30:00.000"}), seed=7)
    write_fits(nights / "night2" / "m33_Ha.fits",
               nina_header(OBJECT="M 33", FILTER="Ha", RA=23.4621, DEC=30.6599, **{"DATE-OBS": "2026-11-20T23:40:00.000"}), seed=8)
    return nights


def synthetic_extras(nights: Path, root: Path) -> Path:
    """SYNTHETIC copies made later: a renamed copy, a .fits.gz and a .fits.fz copy of two
    exposures (other bytes, same exposure), and night 2 copied again to a backup folder."""
    extras = root / "extras"
    (extras / "renamed").mkdir(parents=True)
    shutil.copy2(nights / "night0" / "M 31_Ha_0.fits", extras / "renamed" / "whatever_001.fits")
    source = nights / "night1" / "M31_Ha_1.fits"
    (extras / "compressed").mkdir()
    with gzip.open(extras / "compressed" / "M31_Ha_1.fits.gz", "wb") as out:
        out.write(source.read_bytes())
    with fits.open(nights / "night1" / "M31_OIII_2.fits") as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=data, header=header)]).writeto(
        extras / "compressed" / "M31_OIII_2.fits.fz")
    shutil.copytree(nights / "night2", extras / "backup" / "night2")
    return extras


@pytest.fixture
def synthetic(engine, tmp_path):
    nights = synthetic_nights(tmp_path / "raw")
    first = ingest_paths(engine, [nights])
    extras = synthetic_extras(nights, tmp_path / "raw")
    later = ingest_paths(engine, [extras])
    assert first.new == 20 and later.duplicates == 2 and later.new_copies == 9, (first, later)
    return tmp_path / "raw"


def test_arcsat_copyback_loose_name_then_rerun_is_a_no_op(engine, arcsat_night, tmp_path):
    ingest_paths(engine, [arcsat_night])
    dest = tmp_path / "out"
    summary = copyback(engine, Selection(target="xo1 b"), dest, config=CONFIG)
    assert summary.ok and summary.copied == 16 and summary.exposures == 16
    files = fits_files(dest)
    assert len(files) == 16 and all(f.parent == dest / "xo1_b" / "z" for f in files)
    with session_scope(engine) as session:
        frame_shas = set(session.scalars(select(Frame.sha256).where(Frame.target_key == "xo1b")))
        recorded = session.execute(select(Copy.path, Copy.sha256, Copy.is_canonical).where(
            Copy.path.startswith(str(dest)))).all()
    assert {sha(f) for f in files} == frame_shas
    assert sorted(p for p, _, _ in recorded) == sorted(map(str, files))
    assert not any(canonical for _, _, canonical in recorded)  # the raw file stays canonical
    again = copyback(engine, Selection(target="XO1-b"), dest, config=CONFIG)
    assert again.copied == 0 and again.present == 16 and again.ok
    assert fits_files(dest) == files
    # a raw file was never touched
    assert sha(arcsat_night / "XO1-b_z_20250602_041008.fits") in frame_shas


def test_sbig_same_bytes_under_two_paths_are_copied_once(engine, shared_data, tmp_path):
    ingest_paths(engine, [shared_data / "sbig-st7-ccdchar-lab"])
    dest = tmp_path / "flats"
    summary = copyback(engine, Selection(image_type="flat"), dest, config=CONFIG)
    assert summary.ok
    with session_scope(engine) as session:
        n_flats = session.scalar(select(func.count()).select_from(Frame).where(Frame.image_type == "flat"))
    files = fits_files(dest)
    assert len(files) == summary.copied == summary.exposures == n_flats == 20
    assert summary.same_bytes == 19  # byte-identical copies in the other student folder
    assert len({sha(f) for f in files}) == len(files)
    assert all(f.suffix == ".fit" for f in files)  # the source's ending is kept


def test_synthetic_nights_deduplicated_by_exposure(engine, synthetic, tmp_path):
    dest = tmp_path / "m31"
    summary = copyback(engine, Selection(target="M 31"), dest, config=CONFIG)
    # 18 named exposures + 'Andromeda' by position; the .gz and .fz copies are duplicates
    assert summary.exposures == 19 and summary.frames == 21 and summary.by_position == 1
    assert sum(summary.duplicates.values()) == 2
    assert summary.same_bytes == 8  # renamed copy + the 7 M 31 and Andromeda frames of the backup night
    files = fits_files(dest)
    assert len(files) == 19 and all(f.name.endswith(".fits") for f in files)  # originals, not .gz/.fz
    assert {f.parent.name for f in files} == {"Ha", "OIII"} and {f.parent.parent.name for f in files} == {"M_31"}
    with session_scope(engine) as session:
        originals = set(session.scalars(select(Frame.sha256).where(Frame.duplicate_of_id.is_(None))))
    assert {sha(f) for f in files} <= originals
    text = "\n".join(summary.lines())
    assert "skipped 2 duplicate(s): same exposure" in text and "19 exposure(s)" in text


def test_filter_and_time_range(engine, synthetic, tmp_path):
    import datetime as dt

    summary = copyback(engine, Selection(target="m31", filter_name="ha", since=dt.datetime(2026, 11, 19),
                                         until=dt.datetime(2026, 11, 20)), tmp_path / "o", config=CONFIG)
    assert summary.exposures == 3 and summary.copied == 3


def test_position_match_and_explicit_position(engine, synthetic, tmp_path):
    no_position = copyback(engine, Selection(target="M31", radius_arcmin=0), tmp_path / "a", config=CONFIG, dry_run=True)
    assert no_position.exposures == 18
    by_position = copyback(engine, Selection(ra_deg=M31[0], dec_deg=M31[1], radius_arcmin=5), tmp_path / "b",
                           config=CONFIG, dry_run=True)
    assert by_position.exposures == 19  # the 18 M 31 exposures and 'Andromeda', not 'M 33'
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # dry run writes nothing


def test_header_values_cannot_escape_the_destination(engine, tmp_path):
    raw = tmp_path / "raw"
    hostile = ["../../etc", "a/b\\c", "..", "x@@@@y", "/abs/path", "C:\\win"]
    for i, name in enumerate(hostile):
        path = write_fits(raw / f"f{i}.fits", nina_header(OBJECT=name, FILTER="../Ha", RA=100 + 20 * i, DEC=-60 + 10 * i,
                                                          **{"DATE-OBS": f"2026-11-20T22:0{i}:00"}), seed=i)
        # astropy refuses control characters in values: put them into the bytes afterwards
        path.write_bytes(path.read_bytes().replace(b"x@@@@y", b"x\x1b\x07\x7f\ty"))
    ingest_paths(engine, [raw])
    with session_scope(engine) as session:
        targets = set(session.scalars(select(Frame.target)))
    assert "../../etc" in targets and any("\x1b" in (t or "") for t in targets)
    before = {p for p in tmp_path.rglob("*")}
    dest = tmp_path / "deep" / "dest"
    for name in hostile:
        summary = copyback(engine, Selection(target=None, image_type="light", ra_deg=None, dec_deg=None), dest,
                           config=CONFIG)
        assert summary.ok
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.resolve().is_relative_to(dest.resolve()) or p == dest.parent for p in created)
    files = fits_files(dest)
    assert len(files) == len(hostile)
    for f in files:
        rel = f.relative_to(dest).parts
        assert all(".." not in part and "\\" not in part and part.isprintable() for part in rel)
        assert rel[1] == "Ha"  # '../Ha' made safe


def test_safe_component_and_destination_rules():
    assert safe_component("../../etc") == "etc"
    assert safe_component("a/b") == "a_b"
    assert safe_component("..") == "unknown" and safe_component(None) == "unknown" and safe_component("\n\t") == "unknown"
    assert safe_component("M 31") == "M_31"
    with pytest.raises(UnsafePathError):
        destination(Path("/tmp/x"), "../{seq}{ext}", {"ext": ".fits"}, 1)


def test_never_overwrites_an_existing_name(engine, arcsat_night, tmp_path):
    ingest_paths(engine, [arcsat_night])
    dest = tmp_path / "out"
    squatter = dest / "43BetCom" / "z" / "20250602T033907_30s_0001.fits"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"not mine")
    summary = copyback(engine, Selection(target="43BetCom"), dest, config=CONFIG)
    assert summary.copied == 1
    assert squatter.read_bytes() == b"not mine"
    assert (squatter.parent / "20250602T033907_30s_0002.fits").is_file()


def test_move_deletes_sources_only_after_recording(engine, synthetic, tmp_path):
    dest = tmp_path / "moved"
    with session_scope(engine) as session:
        before = dict(session.execute(select(Frame.sha256, Frame.id).where(Frame.target_key == "m31")).all())
    summary = copyback(engine, Selection(target="M31", filter_name="OIII", radius_arcmin=0), dest, mode="move",
                       config=CONFIG)
    assert summary.ok and summary.copied == 9 and summary.moved == 9
    files = fits_files(dest)
    assert {sha(f) for f in files} <= set(before)
    with session_scope(engine) as session:
        for f in files:
            canonical = session.execute(select(Copy.path).where(Copy.is_current, Copy.is_canonical,
                                                                Copy.sha256 == sha(f))).scalars().all()
            assert canonical == [str(f)]
        stale = session.execute(select(Copy.path).where(Copy.is_current)).scalars().all()
    assert all(os.path.exists(p) for p in stale)  # no current copy points to a deleted file
    assert not list((synthetic / "nights").rglob("*OIII*"))
    again = copyback(engine, Selection(target="M31", filter_name="OIII", radius_arcmin=0), dest, mode="move", config=CONFIG)
    assert again.copied == 0 and again.moved == 0 and again.present == 9


def test_a_copy_deleted_from_the_destination_is_written_and_moved_again(engine, tmp_path):
    """The deleted copy's row (path, size, mtime) is still current, so the ingest that records
    the new file finds it unchanged without reading it: whether a file is recorded is asked of
    the catalogue, not of the ingest's counts."""
    write_fits(tmp_path / "raw" / "a.fits", nina_header(OBJECT="M31"), seed=1)
    ingest_paths(engine, [tmp_path / "raw"])
    selection, dest = Selection(target="M31", radius_arcmin=0), tmp_path / "out"
    assert copyback(engine, selection, dest, config=CONFIG).copied == 1
    (copy,) = fits_files(dest)
    copy.unlink()
    moved = copyback(engine, selection, dest, mode="move", config=CONFIG)
    assert moved.ok and moved.copied == 1 and moved.moved == 1, moved.lines()
    assert fits_files(dest) == [copy] and not fits_files(tmp_path / "raw")


def test_link_mode(engine, arcsat_night, tmp_path):
    ingest_paths(engine, [arcsat_night])
    dest = tmp_path / "links"
    summary = copyback(engine, Selection(target="43 Bet Com"), dest, mode="link", config=CONFIG)
    assert summary.copied == 1
    (link,) = fits_files(dest)
    assert link.is_symlink() and sha(link) == sha(arcsat_night / "43Bet Com_z_20250602_033902.fits")


def test_kind_calibrated(engine, tmp_path):
    # SYNTHETIC calibrated lights: IMAGETYP 'Calibrated Light' (the default dialect's value for
    # reduction's products) beside a raw light of the same target.
    raw = tmp_path / "cal"
    for i in range(3):
        write_fits(raw / f"cal_{i}.fits", nina_header("Calibrated Light", OBJECT="NGC 7000",
                                                      **{"DATE-OBS": f"2026-11-20T22:0{i}:00"}), seed=i)
    write_fits(raw / "light.fits", nina_header(OBJECT="NGC 7000", **{"DATE-OBS": "2026-11-20T23:00:00"}), seed=9)
    ingest_paths(engine, [raw])
    with session_scope(engine) as session:
        types = sorted(session.scalars(select(Frame.image_type)))
    assert types == ["calibrated"] * 3 + ["light"]
    summary = copyback(engine, Selection(target="ngc7000", kind="calibrated"), tmp_path / "o", config=CONFIG)
    assert summary.copied == 3
    assert {sha(f) for f in fits_files(tmp_path / "o")} == {sha(raw / f"cal_{i}.fits") for i in range(3)}
    assert copyback(engine, Selection(target="ngc7000"), tmp_path / "r", config=CONFIG).copied == 1


def test_cli_copyback_dry_run_and_run(db_url, arcsat_night, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["--db", db_url, "-q", "ingest", str(arcsat_night)]).exit_code == 0
    dest = tmp_path / "cli"
    result = runner.invoke(main, ["--db", db_url, "-q", "copyback", "--target", "XO1 b", "--to", str(dest), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would copy 16 file(s)" in result.output and " -> " in result.output and not dest.exists()
    result = runner.invoke(main, ["--db", db_url, "-q", "copyback", "--target", "XO1 b", "--to", str(dest)])
    assert result.exit_code == 0 and "copied 16 file(s)" in result.output
    result = runner.invoke(main, ["--db", db_url, "copyback", "--to", str(dest)])
    assert result.exit_code == 2 and "--target" in result.output
    result = runner.invoke(main, ["--db", db_url, "copyback", "--type", "flats", "--to", str(dest)])
    assert result.exit_code == 2 and "Invalid value for '--type'" in result.output and "'flat'" in result.output


KILL_FRAMES = 120
KILL_BATCH = 10


def many_exposures(root: Path, n: int) -> Path:
    """SYNTHETIC: ``n`` small M 31 Ha exposures, one a minute."""
    import datetime as dt

    start = dt.datetime(2026, 11, 20, 18, 0, 0)
    for i in range(n):
        date_obs = (start + dt.timedelta(minutes=i)).isoformat(timespec="milliseconds")
        write_fits(root / f"m31_Ha_{i:03d}.fits", nina_header(OBJECT="M31", FILTER="Ha", **{"DATE-OBS": date_obs}), seed=i)
    return root


def test_killed_copyback_is_finished_by_the_rerun(db_url, engine, tmp_path):
    """A real `archive copyback` process is killed (SIGKILL) half-way through 120 files.

    No hook in the library: the user file sets batches of 10 files (each batch is recorded
    before the next is written), the test polls the destination folder and stops the process
    as soon as more than one batch is on disk, then checks that it stopped mid-run (some
    files written, not all; at least one batch recorded) before killing it.
    """
    raw = many_exposures(tmp_path / "raw", KILL_FRAMES)
    assert ingest_paths(engine, [raw]).new == KILL_FRAMES
    user = tmp_path / "user.toml"
    user.write_text(f"[copyback]\nbatch_files = {KILL_BATCH}\n")
    dest = tmp_path / "killed"
    archive_cmd = shutil.which("archive") or pytest.fail("the archive command is not installed")
    proc = subprocess.Popen([archive_cmd, "--db", db_url, "-q", "copyback", "--target", "M31", "--radius", "0",
                             "--to", str(dest)], env=dict(os.environ, ARCHIVE_CONFIG=str(user)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(fits_files(dest) if dest.exists() else []) <= KILL_BATCH:
            if proc.poll() is not None:
                pytest.fail(f"the copyback ended before it could be killed: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the copyback never got to its second batch")
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)  # freeze it where it is, then look
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    finals_at_kill = fits_files(dest)
    partials_at_kill = partials(dest)
    with session_scope(engine) as session:
        recorded_at_kill = session.scalar(select(func.count()).select_from(Copy).where(
            Copy.is_current, Copy.path.startswith(str(dest))))
    # it really landed mid-run: the process was running, one batch or more recorded, files missing
    assert still_running
    assert KILL_BATCH < len(finals_at_kill) < KILL_FRAMES, len(finals_at_kill)
    assert KILL_BATCH <= recorded_at_kill <= len(finals_at_kill)

    summary = copyback(engine, Selection(target="M31", radius_arcmin=0), dest, config=CONFIG)
    assert summary.ok, summary.lines()
    assert summary.recorded_found == len(finals_at_kill) - recorded_at_kill  # written, not yet recorded
    assert summary.temp_removed == len(partials_at_kill)  # the killed writer's partial file, if any
    assert summary.present == len(finals_at_kill) and summary.copied == KILL_FRAMES - len(finals_at_kill)
    assert not partials(dest)
    files = fits_files(dest)
    shas = [sha(f) for f in files]
    assert len(files) == KILL_FRAMES and set(shas) == {sha(p) for p in raw.iterdir()}  # nothing lost, nothing twice
    with session_scope(engine) as session:
        recorded = session.execute(select(Copy.path, Copy.sha256).where(Copy.is_current,
                                                                        Copy.path.startswith(str(dest)))).all()
    assert sorted(recorded) == sorted(zip(map(str, files), shas))
    assert copyback(engine, Selection(target="M31"), dest, config=CONFIG).copied == 0


def _wait_for(predicate, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_two_copybacks_into_one_folder_copy_each_exposure_once(db_url, engine, synthetic, tmp_path):
    """Two real `archive copyback` processes into one folder at once.

    The test holds the folder's lock until both runs wait for it (they say so), then lets them
    go together: one copies the 19 exposures, the other waits for it and then finds them there.
    """
    dest = tmp_path / "together"
    archive_cmd = shutil.which("archive") or pytest.fail("the archive command is not installed")
    outs = [tmp_path / f"run{i}.out" for i in range(2)]
    errs = [tmp_path / f"run{i}.err" for i in range(2)]
    procs = []
    try:
        with hold_destination(dest):
            for out, err in zip(outs, errs):
                with open(out, "w") as stdout, open(err, "w") as stderr:
                    procs.append(subprocess.Popen([archive_cmd, "--db", db_url, "-q", "copyback", "--target", "M31",
                                                   "--to", str(dest)], stdout=stdout, stderr=stderr))
            _wait_for(lambda: all("waiting for it to finish" in e.read_text() for e in errs), "both runs to wait")
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [o.read_text() for o in outs]
    assert codes == [0, 0], [*outputs, *(e.read_text() for e in errs)]
    assert f"(process {os.getpid()}) is writing into {dest}" in errs[0].read_text()
    assert sorted(outputs) == sorted([
        "selected 21 frame(s) = 19 exposure(s), 1 matched by position under another name\n"
        "copied 19 file(s); 0 exposure(s) already in the destination\n"
        "skipped 8 other file(s) holding the same bytes as a copied frame\n"
        "skipped 2 duplicate(s): same exposure (instrument and DATE-OBS) as a kept frame, other bytes "
        "(a compressed, edited or re-written copy)\n",
        "selected 21 frame(s) = 19 exposure(s), 1 matched by position under another name\n"
        "copied 0 file(s); 19 exposure(s) already in the destination\n"
        "skipped 2 duplicate(s): same exposure (instrument and DATE-OBS) as a kept frame, other bytes "
        "(a compressed, edited or re-written copy)\n",
    ]), outputs
    files = fits_files(dest)
    assert len(files) == 19 and len({sha(f) for f in files}) == 19
    with session_scope(engine) as session:
        recorded = session.scalars(select(Copy.path).where(Copy.is_current, Copy.path.startswith(str(dest)))).all()
    assert sorted(recorded) == sorted(map(str, files))


def test_a_busy_destination_is_said_clearly(db_url, engine, synthetic, tmp_path):
    dest = tmp_path / "busy"
    with hold_destination(dest) as lock:
        assert lock == dest / LOCK_NAME and lock.read_text().strip() == str(os.getpid())
        result = CliRunner().invoke(main, ["--db", db_url, "-q", "copyback", "--target", "M31", "--to", str(dest),
                                           "--no-wait"])
        assert result.exit_code == 1
        assert (f"archive: error: another copyback or project collect (process {os.getpid()}) is writing into "
                f"{dest}") in result.output
        started = time.monotonic()
        with pytest.raises(DestinationBusyError, match="waited 0.3 s"):
            copyback(engine, Selection(target="M31"), dest, config=CONFIG, lock_timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
        assert copyback(engine, Selection(target="M31"), dest, config=CONFIG, dry_run=True).copied == 19  # no lock
        assert not fits_files(dest)
    assert copyback(engine, Selection(target="M31"), dest, config=CONFIG, lock_timeout_s=0).copied == 19


def test_threads_sharing_the_library_copy_each_exposure_once(engine, synthetic, tmp_path):
    """Three threads run copyback into one folder at once (separate lock descriptors conflict
    within one process too)."""
    dest = tmp_path / "threads"
    results, errors = [], []
    barrier = threading.Barrier(3)

    def run():
        try:
            barrier.wait()
            results.append(copyback(engine, Selection(target="M31"), dest, config=CONFIG))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3
    assert sorted(r.copied for r in results) == [0, 0, 19] and all(r.ok for r in results)
    assert len(fits_files(dest)) == 19


def test_recovery_removes_only_partials_of_writers_that_are_gone(engine, synthetic, tmp_path):
    dest = tmp_path / "out"
    folder = dest / "M_31" / "Ha"
    folder.mkdir(parents=True)
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True).stdout)
    dead = folder / f".x.fits.{gone}.0123abcd.part"  # left by a writer that has exited
    alive = temporary_path(folder / "y.fits")  # this process's: a writer still at work
    dead.write_bytes(b"partial")
    alive.write_bytes(b"partial")
    summary = copyback(engine, Selection(target="M31"), dest, config=CONFIG)
    assert summary.ok and summary.copied == 19 and summary.temp_removed == 1
    assert "removed 1 temporary file(s) of an interrupted run" in summary.lines()
    assert not dead.exists() and alive.exists()


def test_configuration_is_read_and_checked():
    config = load_gather_config()
    assert "{seq" in config.template and config.position_radius_arcmin > 0


def test_copyback_toml_is_the_only_source_of_defaults(tmp_path, monkeypatch):
    with pytest.raises(TypeError):
        GatherConfig()  # no defaults of its own
    toml = tomllib.loads((resource_dir("configs") / "copyback.toml").read_text())
    cb, pr = toml["copyback"], toml["project"]
    assert (CONFIG.template, CONFIG.date_format, CONFIG.missing) == (cb["template"], cb["date_format"], cb["missing"])
    assert (CONFIG.position_radius_arcmin, CONFIG.batch_files) == (cb["position_radius_arcmin"], cb["batch_files"])
    assert (CONFIG.lights_folder, CONFIG.project_lights) == (pr["lights_folder"], pr["lights"])
    assert (CONFIG.masters_folder, CONFIG.project_masters) == (pr["masters_folder"], pr["masters"])
    assert "required_masters" not in pr and CONFIG.super_luminance == pr["super_luminance"]
    assert CONFIG.super_luminance_filters == tuple(pr["super_luminance_filters"])
    user = load_gather_config(Settings(raw={"copyback": {"batch_files": 7}, "project": {"super_luminance_filters": ["L"]}}))
    assert user.batch_files == 7 and user.super_luminance_filters == ("L",) and user.template == CONFIG.template
    with pytest.raises(ConfigError, match="invalid value"):
        load_gather_config(Settings(raw={"copyback": {"batch_files": "many"}}))
    # a package file without a key is an error, not a silent default
    (tmp_path / "copyback.toml").write_text("\n".join(
        line for line in (resource_dir("configs") / "copyback.toml").read_text().splitlines()
        if not line.startswith("batch_files")))
    monkeypatch.setattr(sys.modules["archive.gather.config"], "resource_dir", lambda name: tmp_path)
    with pytest.raises(ConfigError, match="missing key 'batch_files'"):
        load_gather_config(Settings())


def test_duplicate_reasons_say_which_frame_was_kept():
    original = SimpleNamespace(id=1, image_type="light", duplicate_of_id=None)
    compressed = SimpleNamespace(id=2, image_type="light", duplicate_of_id=1)
    assert "a compressed, edited or re-written copy" in duplicate_reason(original, compressed)
    assert "the original has no readable file" in duplicate_reason(compressed, original)
    old, new = (SimpleNamespace(id=i, image_type="calibrated", duplicate_of_id=None) for i in (5, 9))
    assert "an older calibrated product" in duplicate_reason(new, old)


def test_a_source_changed_since_ingest_is_not_copied(engine, synthetic, tmp_path):
    """Verification fails for real: one source's bytes change after it was catalogued."""
    changed = synthetic / "nights" / "night0" / "M 31_Ha_1.fits"
    with open(changed, "r+b") as fh:
        fh.seek(-10, os.SEEK_END)
        fh.write(b"0123456789")
    dest = tmp_path / "out"
    summary = copyback(engine, Selection(target="M31", radius_arcmin=0), dest, config=CONFIG)
    assert not summary.ok and summary.copied == 17
    assert summary.failures == [(str(changed), "the source's SHA-256 differs from the catalogue's (changed since it was catalogued?)")]
    assert len(fits_files(dest)) == 17 and not partials(dest)
    result = CliRunner().invoke(main, ["--db", str(engine.url.render_as_string(hide_password=False)), "-q", "copyback",
                                       "--target", "M31", "--radius", "0", "--to", str(dest)])
    assert result.exit_code == 1 and "FAILED" in result.output and "copied 0 file(s)" in result.output


def test_move_after_copy_finishes_the_move_but_never_deletes_through_a_link(engine, synthetic, tmp_path):
    selection = Selection(target="M31", filter_name="Ha", since=None, radius_arcmin=0)
    linked = copyback(engine, selection, tmp_path / "links", mode="link", config=CONFIG)
    assert linked.copied == 9
    refused = copyback(engine, selection, tmp_path / "links", mode="move", config=CONFIG)
    assert refused.moved == 0 and len(refused.failures) == 9 and "is a link to it" in refused.failures[0][1]
    assert len(list((synthetic / "nights").rglob("*_Ha_*.fits"))) == 9  # nothing deleted
    copied = copyback(engine, selection, tmp_path / "copies", config=CONFIG)
    assert copied.copied == 9 and copied.moved == 0
    moved = copyback(engine, selection, tmp_path / "copies", mode="move", config=CONFIG)
    assert moved.ok and moved.copied == 0 and moved.moved == 9 and moved.present == 9
    assert not list((synthetic / "nights").rglob("*_Ha_*.fits"))
    with session_scope(engine) as session:
        current = session.scalars(select(Copy.path).where(Copy.is_current, Copy.is_canonical)).all()
    assert all(os.path.exists(p) for p in current)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=50))
def test_any_header_value_gives_a_safe_name(value, filt):
    part = safe_component(value)
    assert part and ".." not in part and not part.startswith(".") and len(part) <= 100
    assert all(c.isascii() and (c.isalnum() or c in "._+-") for c in part)
    root = Path("/tmp/archive-dest")
    path = destination(root, CONFIG.template, {"target": part, "filter": safe_component(filt), "date_obs": "d",
                                               "exposure": "1", "ext": ".fits"}, 1)
    assert path.parent.parent.parent == root
