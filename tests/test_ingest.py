"""Ingest on both backends, with real files: the shared real sets, astropy's own FITS test
files, and small synthetic files (synthetic where the real sets have gaps: compressed copies,
changed files, duplicate exposures, bad files)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import astropy
import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import func, select

from archive.db import Copy, Frame, IngestProblem, session_scope
from archive.ingest import ingest_paths
from archive.reports import summarize
from tests.factories import nina_header, write_fits

ASTROPY_FITS_DATA = Path(astropy.__file__).parent / "io" / "fits" / "tests" / "data"


def manifest_counts(manifest: Path) -> Counter:
    """(type, filter, exptime) -> files, from a MANIFEST.md 'Counts by' list."""
    counts = Counter()
    for line in manifest.read_text().splitlines():
        match = re.match(r"- \((.+?), (.+?), ([\d.]+)\): (\d+)$", line)
        if match:
            kind, filt, exptime, n = match.groups()
            kind = None if kind == "None" else kind.strip("'").lower()
            filt = None if filt == "None" else filt.strip("'")
            counts[(kind, filt, round(float(exptime), 2))] += int(n)
    return counts


def catalogue_state(engine):
    """Everything ingest decides, in a comparable form (ids and times left out)."""
    with session_scope(engine) as s:
        frames = sorted(s.execute(select(Frame.sha256, Frame.image_type, Frame.duplicate_of_id.is_not(None))).all())
        copies = sorted(s.execute(select(Copy.path, Copy.sha256, Copy.is_current, Copy.is_canonical)).all())
        problems = sorted(s.execute(select(IngestProblem.path, IngestProblem.severity, IngestProblem.resolved)).all())
    return frames, copies, problems


def test_arcsat_night_matches_manifest(engine, shared_data):
    root = shared_data / "arcsat-uw-astr480"
    summary = ingest_paths(engine, [root])
    assert summary.ok and summary.new == 32 and summary.skipped == 5  # 4 ACP logs + MANIFEST.md
    assert summary.by_type == Counter(bias=5, dark=5, flat=5, light=17)
    with session_scope(engine) as s:
        table = summarize(s, ("image_type", "filter_name", "exposure_time_s"))
    table = table.astype(object).where(table.notna(), None)  # no filter: None, as in the MANIFEST
    got = Counter({(r.image_type, r.filter_name, round(r.exposure_time_s, 2)): r.files for r in table.itertuples()})
    assert got == manifest_counts(root / "MANIFEST.md")


def test_sbig_lab_set_typed_from_file_names_with_copies(engine, shared_data):
    root = shared_data / "sbig-st7-ccdchar-lab"
    summary = ingest_paths(engine, [root])
    assert summary.ok
    assert summary.new == 25 and summary.new_copies == 24  # 24 byte-identical copies under PWentCCDStuff
    with session_scope(engine) as s:
        rows = s.execute(select(Frame.image_type, Frame.sources, Frame.id)).all()
        assert {t for t, _, _ in rows} == {"bias", "flat"}
        assert all("file name" in src["image_type"] for _, src, _ in rows)
        for frame_id in [fid for _, _, fid in rows]:
            copies = s.scalars(select(Copy).where(Copy.frame_id == frame_id)).all()
            assert sum(c.is_canonical for c in copies) == 1
            names = {Path(c.path).name for c in copies}
            assert len(names) == 1  # the copies are the same file name under two folders
        table = summarize(s, ("exposure_time_s",))
    got = Counter({round(r.exposure_time_s, 2): r.files for r in table.itertuples()})
    expected = Counter()
    for (_, _, exptime), n in manifest_counts(root / "MANIFEST.md").items():
        expected[exptime] += n
    assert got == expected and sum(got.values()) == 49


def test_odd_dialects_every_frame_typed_or_reported(engine, shared_data):
    root = shared_data / "odd-dialects-eso-midas-testdata"
    summary = ingest_paths(engine, [root])
    assert summary.ok and summary.new == 6
    with session_scope(engine) as s:
        frames = s.execute(select(Frame.image_type, Frame.hdu_index, Frame.naxis3, Copy.path).join(Copy)).all()
        warned = set(s.scalars(select(IngestProblem.path).where(IngestProblem.severity == "warning")))
    for image_type, _, _, path in frames:
        assert image_type is not None or path in warned
    by_name = {Path(p).name: (t, h, n3) for t, h, n3, p in frames}
    assert by_name["vimos.fits"][:2] == ("flat", 1)  # image in the first extension
    assert by_name["NOT.fits"][:2] == ("flat", 1)
    assert by_name["VISIR.2004-09-30T03:17:49.095.fits"][2] == 17  # a cube
    assert by_name["ccd.fits"][0] is None


def test_astropy_test_files_each_give_a_row_or_a_problem(engine, tmp_path):
    assert ASTROPY_FITS_DATA.is_dir()
    summary = ingest_paths(engine, [ASTROPY_FITS_DATA])
    fits_names = [p for p in ASTROPY_FITS_DATA.rglob("*") if p.is_file() and p.name.lower().endswith(
        (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz"))]
    with session_scope(engine) as s:
        ingested = set(s.scalars(select(Copy.path).where(Copy.is_current)))
        failed = set(s.scalars(select(IngestProblem.path).where(IngestProblem.severity == "error")))
    for path in fits_names:
        assert (str(path) in ingested) != (str(path) in failed), path
    # astropy ships deliberately broken files too, and tables, which are not image frames
    assert len(ingested) >= 10 and summary.problems
    reasons = dict(summary.problems)
    assert reasons[str(ASTROPY_FITS_DATA / "btable.fits")].startswith("not an image: the file holds only tables")
    assert reasons[str(ASTROPY_FITS_DATA / "checksum_false.fits")].startswith("corrupt")
    assert all(reason and "\n" not in reason for _, reason in summary.problems)


def test_bad_files_become_problems_and_the_batch_goes_on(engine, tmp_path, arcsat_night):
    night = tmp_path / "night"
    night.mkdir()
    good = shutil.copy2(arcsat_night / "Bias_BIN1_20250602_032138.fits", night / "good.fits")
    whole = Path(good).read_bytes()
    (night / "truncated.fits").write_bytes(whole[: len(whole) // 2])
    (night / "empty.fits").write_bytes(b"")
    (night / "notes.fits").write_text("observing notes, not FITS\n" * 200)
    (night / "no_end.fit").write_bytes(whole[:2880 * 2].replace(b"END     ", b"XEND    "))
    (night / "readme.txt").write_text("skipped quietly")
    summary = ingest_paths(engine, [night])
    reasons = {Path(p).name: r for p, r in summary.problems}
    assert summary.new == 1 and summary.skipped == 1 and not summary.ok
    assert reasons["truncated.fits"].startswith("truncated")
    assert reasons["empty.fits"] == "empty file (0 bytes)"
    assert reasons["notes.fits"].startswith("not a FITS file")
    assert reasons["no_end.fit"].startswith("truncated")
    assert Path(good).read_bytes() == whole  # raw files are never modified
    # seen again unchanged, they are still problems but are neither re-read nor re-recorded
    again = ingest_paths(engine, [night])
    assert {Path(p).name for p, _ in again.problems} == set(reasons) and again.unchanged == 1
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(IngestProblem).where(IngestProblem.severity == "error")) == 4
    # fixing a file resolves its problem
    shutil.copy2(arcsat_night / "Dark_BIN1_20250602_032243.fits", night / "truncated.fits")
    fixed = ingest_paths(engine, [night])
    assert fixed.new == 1 and len(fixed.problems) == 3
    with session_scope(engine) as s:
        resolved = s.scalars(select(IngestProblem.path).where(IngestProblem.resolved)).all()
    assert [Path(p).name for p in resolved] == ["truncated.fits"]


def test_reingest_is_decided_from_size_and_mtime_without_reading(engine, tmp_path):
    path = write_fits(tmp_path / "n" / "light.fits", nina_header(), seed=1)
    ingest_paths(engine, [tmp_path / "n"])
    stat = path.stat()
    other = write_fits(tmp_path / "other.fits", nina_header(), seed=2)
    assert other.stat().st_size == stat.st_size
    shutil.copyfile(other, path)  # different bytes, same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime
    summary = ingest_paths(engine, [tmp_path / "n"])
    assert (summary.unchanged, summary.new, summary.changed) == (1, 0, 0)


def test_same_bytes_elsewhere_is_a_new_copy_and_a_changed_file_keeps_history(engine, tmp_path):
    first = write_fits(tmp_path / "a" / "light.fits", nina_header(), seed=1)
    ingest_paths(engine, [tmp_path / "a"])
    twin = tmp_path / "b" / "light copy.fits"
    twin.parent.mkdir()
    shutil.copyfile(first, twin)
    summary = ingest_paths(engine, [tmp_path])
    assert (summary.new, summary.new_copies, summary.unchanged) == (0, 1, 1)
    # the canonical copy changes: history is kept and the other copy becomes canonical
    write_fits(first, nina_header(), seed=3)
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    summary = ingest_paths(engine, [tmp_path])
    assert (summary.changed, summary.new, summary.unchanged) == (1, 0, 1)
    with session_scope(engine) as s:
        rows = s.execute(select(Copy.path, Copy.is_current, Copy.is_canonical, Copy.frame_id).order_by(Copy.id)).all()
        assert s.scalar(select(func.count()).select_from(Frame)) == 2
    assert [(Path(p).name, cur, can) for p, cur, can, _ in rows] == [
        ("light.fits", False, False), ("light copy.fits", True, True), ("light.fits", True, True)]
    assert rows[0].frame_id == rows[1].frame_id != rows[2].frame_id
    # the changed file shares DATE-OBS and instrument with the old frame: a duplicate exposure
    assert summary.duplicates == 1


def test_duplicate_exposures_are_flagged(engine, tmp_path):
    write_fits(tmp_path / "one.fits", nina_header(), seed=1)
    with fits.open(tmp_path / "one.fits") as hdul:  # the same exposure, tile-compressed
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(hdul[0].data, hdul[0].header)]).writeto(tmp_path / "one.fits.fz")
    write_fits(tmp_path / "two.fits", nina_header(**{"DATE-OBS": "2026-11-20T22:05:00"}), seed=2)
    summary = ingest_paths(engine, [tmp_path])
    assert summary.new == 3 and summary.duplicates == 1
    with session_scope(engine) as s:
        rows = dict(s.execute(select(Copy.path, Frame.duplicate_of_id).join(Frame)).all())
        first_id = s.scalar(select(Copy.frame_id).where(Copy.path == str(tmp_path / "one.fits")))
    assert rows[str(tmp_path / "one.fits.fz")] == first_id
    assert rows[str(tmp_path / "one.fits")] is None and rows[str(tmp_path / "two.fits")] is None


def test_compressed_multi_extension_and_odd_names(engine, tmp_path):
    data = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    header = fits.Header(nina_header("FLAT"))
    folder = tmp_path / "odd names"
    folder.mkdir()
    fits.PrimaryHDU(data, header).writeto(folder / "flat 1: Ha.FTS")
    with open(folder / "flat 1: Ha.FTS", "rb") as src, gzip.open(folder / "flat2.fits.gz", "wb") as dst:
        dst.write(src.read().replace(b"2026-11-20T22:01:02.123", b"2026-11-20T22:09:09.000"))
    fits.HDUList([fits.PrimaryHDU(header=fits.Header(nina_header("FLAT", **{"DATE-OBS": "2026-11-20T22:10:00"}))),
                  fits.ImageHDU(data, name="SCI")]).writeto(folder / "mef.fits")
    fits.PrimaryHDU(np.zeros((3, 8, 8), np.int16), fits.Header(nina_header("LIGHT"))).writeto(folder / "cube.fit")
    summary = ingest_paths(engine, [folder])
    assert summary.ok and summary.new == 4, summary.problems
    with session_scope(engine) as s:
        rows = {Path(p).name: (t, h, n1, n2, n3) for p, t, h, n1, n2, n3 in s.execute(
            select(Copy.path, Frame.image_type, Frame.hdu_index, Frame.naxis1, Frame.naxis2, Frame.naxis3).join(Frame))}
    assert rows["flat 1: Ha.FTS"] == ("flat", 0, 32, 24, None)
    assert rows["flat2.fits.gz"] == ("flat", 0, 32, 24, None)
    assert rows["mef.fits"] == ("flat", 1, 32, 24, None)  # header inherited from the primary
    assert rows["cube.fit"] == ("light", 0, 8, 8, 3)


def test_whole_header_is_stored(engine, arcsat_night):
    from archive.ingest.cards import header_from_text

    path = arcsat_night / "XO1-b_z_20250602_041008.fits"
    ingest_paths(engine, [path])
    with session_scope(engine) as s:
        frame = s.scalars(select(Frame)).one()
        stored = header_from_text(frame.header)
    original = fits.getheader(path)
    assert list(stored.keys()) == list(original.keys())
    assert stored["AIRMASS"] == original["AIRMASS"] and stored["OBJCTRA"] == original["OBJCTRA"]
    assert frame.sources["image_type"] == "IMAGETYP='LIGHT'" and frame.sources["dialect"] == "maxim/1"


def test_ingesting_twice_changes_nothing(engine, shared_data, shared_fits_count):
    ingest_paths(engine, [shared_data])
    once = catalogue_state(engine)
    again = ingest_paths(engine, [shared_data])
    assert again.new == again.new_copies == again.changed == 0 and again.unchanged == shared_fits_count
    assert catalogue_state(engine) == once


def test_worker_pool_writes_the_catalogue_of_one_process(engine, shared_data, shared_fits_count, tmp_path):
    """Two workers reading and writing 18 batches of 5 files (the SBIG set's byte-identical
    copies among them) give exactly what one process gives, canonical copies included."""
    from archive.config import load_settings
    from archive.db.session import open_catalogue
    from archive.ingest.pool import POOL_THRESHOLD

    assert POOL_THRESHOLD <= shared_fits_count
    pooled = ingest_paths(engine, [shared_data], settings=load_settings({"ingest": {"workers": 2, "batch_size": 5}}))
    single_engine = open_catalogue(tmp_path / "single.sqlite")
    single = ingest_paths(single_engine, [shared_data], settings=load_settings({"ingest": {"workers": 1}}))
    assert catalogue_state(engine) == catalogue_state(single_engine)
    single_engine.dispose()
    counts = ("new", "new_copies", "changed", "unchanged", "warnings", "duplicates", "by_type")
    assert [getattr(pooled, c) for c in counts] == [getattr(single, c) for c in counts]
    assert pooled.new + pooled.new_copies == shared_fits_count and pooled.new_copies == 24
    if engine.dialect.name == "sqlite":  # the main process checkpointed the workers' log
        assert _unchecked_pages(engine) == 0


def _unchecked_pages(engine) -> int:
    """Pages of a SQLite catalogue that are in its write-ahead log only (not yet copied into
    the database file), read off the file's size against the page count."""
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar()
    return pages - os.path.getsize(engine.url.database) // page_size


def test_checkpoint_copies_the_log_into_the_database_file(db_url, arcsat_night):
    """A catalogue opened as ingest's workers open it does not checkpoint by itself; the
    process that waits for them does, with :func:`checkpoint` (nothing to do on PostgreSQL)."""
    from archive.config import load_settings
    from archive.db.session import checkpoint, open_catalogue

    engine = open_catalogue(db_url, autocheckpoint=False)
    summary = ingest_paths(engine, [arcsat_night], settings=load_settings({"ingest": {"workers": 1}}))
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        assert _unchecked_pages(engine) > 0
    checkpoint(engine)
    if engine.dialect.name == "sqlite":
        assert _unchecked_pages(engine) == 0
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Frame)) == summary.new == 32
    engine.dispose()


@pytest.mark.parametrize("stop", ["kill", "ctrl-c"])
def test_a_stopped_ingest_leaves_no_worker_behind_and_the_next_run_completes(db_url, shared_data, shared_fits_count,
                                                                           tmp_path, stop):
    """Stop a pooled ingest (one-file batches) half-way, by SIGKILL of its main process or
    by Ctrl-C (SIGINT to the whole process group, as a terminal sends it): the run and all its
    workers end (none waits for a batch that will never come), and the next run gives the
    catalogue of one uninterrupted run."""
    import signal
    import time

    from archive.db.session import open_catalogue

    command = [sys.executable, "-m", "archive.cli", "--quiet", "--db", db_url, "ingest", "--workers", "2",
               "--batch-size", "1", str(shared_data)]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    engine = open_catalogue(db_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            if s.scalar(select(func.count()).select_from(Copy)) >= 5:
                break
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.01)
    if stop == "kill":
        os.kill(run.pid, signal.SIGKILL)
    else:
        os.killpg(run.pid, signal.SIGINT)
    run.wait(timeout=60)
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Copy)) < shared_fits_count  # stopped half-way
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(run.pid, 0)  # a worker of the stopped run is still there
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("workers of the stopped ingest are still running after 30 s")
    again = ingest_paths(engine, [shared_data])
    assert again.new + again.new_copies + again.unchanged == shared_fits_count
    single = open_catalogue(tmp_path / "single.sqlite")
    ingest_paths(single, [shared_data])
    assert catalogue_state(engine)[:2] == catalogue_state(single)[:2]
    engine.dispose()
    single.dispose()


def test_two_processes_at_once_give_the_catalogue_of_one(db_url, shared_data, tmp_path):
    from archive.db.session import open_catalogue

    tree = tmp_path / "tree"
    shutil.copytree(shared_data / "sbig-st7-ccdchar-lab", tree / "sbig", copy_function=shutil.copy2)
    shutil.copytree(shared_data / "arcsat-uw-astr480", tree / "arcsat", copy_function=shutil.copy2)
    command = [sys.executable, "-m", "archive.cli", "--quiet", "--db", db_url, "ingest", "--batch-size", "7", str(tree)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "Traceback" not in err
    engine = open_catalogue(db_url)
    both = catalogue_state(engine)
    engine.dispose()

    single_db = tmp_path / "single.sqlite"
    single = open_catalogue(single_db)
    ingest_paths(single, [tree])
    expected = catalogue_state(single)
    single.dispose()
    assert both[0] == expected[0] and both[1] == expected[1]
    assert len(both[0]) == 57 and sum(1 for c in both[1] if c[2]) == 81


def test_a_reader_is_not_blocked_by_an_open_write(db_url, tmp_path):
    from archive.db.session import open_catalogue

    writer, reader = open_catalogue(db_url), open_catalogue(db_url, busy_timeout_s=0.5)
    write_fits(tmp_path / "f.fits", nina_header(), seed=1)
    ingest_paths(writer, [tmp_path])
    with session_scope(writer, write=True) as w:
        w.execute(Frame.__table__.update().values(target="changing"))
        with session_scope(reader) as r:  # reads the last committed state, without waiting
            assert r.scalar(select(Frame.target)) == "M 31"
    with session_scope(reader) as r:
        assert r.scalar(select(Frame.target)) == "changing"
    writer.dispose()
    reader.dispose()


def test_derived_frames_of_an_exposure_are_not_duplicates(engine, tmp_path):
    write_fits(tmp_path / "light.fits", nina_header(), seed=1)
    write_fits(tmp_path / "light_cal.fits", nina_header(IMAGETYP="Calibrated Light"), seed=2)
    write_fits(tmp_path / "light_cal_again.fits", nina_header(IMAGETYP="Calibrated Light"), seed=3)
    summary = ingest_paths(engine, [tmp_path])
    assert summary.by_type == Counter(light=1, calibrated=2) and summary.duplicates == 0


def test_values_the_schema_cannot_hold_are_cut_or_null_with_a_warning(engine, tmp_path):
    header = nina_header(OBJECT="NGC 7000 " + "x" * 400, XBINNING=10**12)
    write_fits(tmp_path / "odd.fits", header, seed=1)
    write_fits(tmp_path / "fine.fits", nina_header(**{"DATE-OBS": "2026-11-20T23:00:00"}), seed=2)
    summary = ingest_paths(engine, [tmp_path])
    assert summary.ok and summary.new == 2 and summary.warnings == 1
    with session_scope(engine) as s:
        target, binning = s.execute(select(Frame.target, Frame.binning_x).join(Copy).where(
            Copy.path == str(tmp_path / "odd.fits"))).one()
        reason = s.scalar(select(IngestProblem.reason).where(IngestProblem.severity == "warning"))
    assert target.startswith("NGC 7000 xx") and len(target) == 200 and binning is None
    assert "target longer than 200 characters" in reason and "binning_x=1000000000000 is out of range" in reason
