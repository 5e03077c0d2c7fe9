"""Bad and odd input (issue 13, the ingest side): every defect found by throwing a corpus of
broken files at ingest has a test here, on both backends where the catalogue is involved."""

from __future__ import annotations

import gzip
import os
import shutil
from collections import Counter
from pathlib import Path, PurePath

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from archive.cli import main
from archive.config import Settings
from archive.db import Copy, Frame, IngestProblem, session_scope
from archive.db.models import Master
from archive.ingest import ingest_paths
from archive.ingest.dialects import DialectSet
from archive.ingest.cards import CardIndex
from archive.ingest.headers import FileRead, read_fits
from archive.ingest.normalize import normalize_header
from tests.factories import nina_header, write_fits


class _CountingText(str):
    """A str that counts the characters its slices and concatenations copy (the reader's work)."""

    copied = 0

    def __getitem__(self, index):
        piece = _CountingText(str.__getitem__(self, index))
        _CountingText.copied += len(piece)
        return piece

    def __add__(self, other):
        joined = _CountingText(str.__add__(self, other))
        _CountingText.copied += len(joined)
        return joined


def _copied_to_index(n_continue: int) -> int:
    header = fits.Header()
    header["LONGSTR"] = "x" * (67 * n_continue)
    header["EXPTIME"] = 30.0
    text = _CountingText(header.tostring())
    _CountingText.copied = 0
    index = CardIndex(text)
    assert index.get("EXPTIME") == 30.0
    return _CountingText.copied


def test_many_continue_cards_are_indexed_in_linear_work():
    """20 MB of CONTINUE cards took 101 s: each card was appended to a growing string."""
    small, large = _copied_to_index(2000), _copied_to_index(8000)
    assert large <= 4 * small * 1.2  # linear: 4x the cards, 4x the characters copied (quadratic: 16x)


def test_a_long_continued_string_is_read_as_astropy_reads_it():
    header = fits.Header()
    header["LONGSTR"] = "abc&'d " * 3000
    assert CardIndex(header.tostring()).get("LONGSTR") == header["LONGSTR"]


# -- helpers ----------------------------------------------------------------------------------------

def _light(path: Path, seed: int = 1, **cards) -> Path:
    header = nina_header(**{"DATE-OBS": f"2026-11-20T22:{seed % 60:02d}:00"})
    header.update(cards)
    return write_fits(path, {k: v for k, v in header.items() if v is not None}, seed=seed)


def _mutate(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    """Copy ``source`` with one 80-character card's value field replaced (bytes, verbatim)."""
    data = source.read_bytes()
    assert old in data, old
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.replace(old, new.ljust(len(old)), 1))
    return target


def _card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".encode()


def _frames(engine):
    with session_scope(engine) as s:
        rows = s.execute(select(Copy.path, Frame).join(Frame, Copy.frame_id == Frame.id)).all()
    return {Path(p).name: f for p, f in rows}


def _problems(engine, severity: str) -> dict[str, str]:
    with session_scope(engine) as s:
        rows = s.execute(select(IngestProblem.path, IngestProblem.reason).where(IngestProblem.severity == severity))
        return {Path(p).name: r for p, r in rows}


# -- 1. image type: a generic type is refined only on strong evidence --------------------------------

@pytest.fixture(scope="module")
def dialects():
    return DialectSet()


def _type(dialects, cards: dict, name: str = "frame.fits", folders=()):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    out = normalize_header(CardIndex(header.tostring()), dialects, path=PurePath(name), folders=folders)
    return out.values["image_type"], out.sources.get("image_type")


@pytest.mark.parametrize("cards, name", [
    ({"OBJECT": "Dark Shark Nebula"}, "frame.fits"),
    ({"OBJECT": "Barnards Arc"}, "frame.fits"),
    ({"OBJECT": "Dark Shark Nebula"}, "Dark Shark Nebula_Ha_300s_001.fits"),  # named after the target
    ({"OBJECT": "NGC 891"}, "NGC891_zeropoint_001.fits"),  # "zero" inside a longer token
    ({"OBJECT": "M 31"}, "M31_Light_dark_sky_001.fits"),  # the name itself says Light
    ({"OBJECT": "zero_pointing"}, "frame.fits"),
])
def test_an_explicit_light_is_not_overridden_by_words_inside_names(dialects, cards, name):
    kind, source = _type(dialects, {"IMAGETYP": "LIGHT", **cards}, name)
    assert (kind, source) == ("light", "IMAGETYP='LIGHT'")


def test_a_light_folder_below_a_target_folder_is_contrary_evidence(dialects):
    kind, source = _type(dialects, {"IMAGETYP": "LIGHT"}, "frame_001.fits", ("Dark Shark Nebula", "Light"))
    assert (kind, source) == ("light", "IMAGETYP='LIGHT'")


@pytest.mark.parametrize("cards, name, folders, expected, evidence", [
    ({"IMAGETYP": "LIGHT", "OBJECT": "Flat field"}, "f.fits", (), "flat", "OBJECT 'Flat field' is a calibration phrase"),
    ({"IMAGETYP": "LIGHT", "OBJECT": "dark_003"}, "f.fits", (), "dark", "OBJECT 'dark_003' is a calibration phrase"),
    ({"IMAGETYP": "LIGHT"}, "Dark_300s_001.fits", (), "dark", "word 'dark' in file name 'Dark_300s_001'"),
    ({"IMAGETYP": "LIGHT"}, "bias3.fits", (), "bias", "word 'bias3' in file name 'bias3'"),
    ({"EXPTIME": 5.0}, "frame_001.fits", ("2026-11-20", "Flats"), "flat", "word 'flats' in folder 'Flats'"),
])
def test_a_generic_type_is_refined_on_strong_evidence_recorded_in_sources(dialects, cards, name, folders,
                                                                             expected, evidence):
    kind, source = _type(dialects, cards, name, folders)
    assert kind == expected and source.startswith(evidence)
    if "IMAGETYP" in cards:
        assert source.endswith("(over IMAGETYP='LIGHT')")


def test_lco_exposures_are_lights(engine, shared_data):
    """OBSTYPE 'EXPOSE' is LCO's science exposure; OBJECT 'zero_pointing' is no bias
    (before: 2 untyped, 2 typed bias)."""
    summary = ingest_paths(engine, [shared_data / "lco-fz-ocs-archive"])
    assert summary.ok and summary.by_type == Counter(light=4)
    with session_scope(engine) as s:
        sources = s.scalars(select(Frame.sources)).all()
    assert {src["image_type"] for src in sources} == {"OBSTYPE='EXPOSE'"} and {src["dialect"] for src in sources} == {"lco/1"}


# -- 2. impossible values: NULL and a warning naming the keyword, the same on both backends ----------

def test_impossible_values_are_null_with_a_warning_on_both_backends(engine, tmp_path):
    night = tmp_path / "night"
    _light(night / "negative.fits", 1, EXPTIME=-60.0, EXPOSURE=None)
    _light(night / "huge.fits", 2, EXPTIME=1e308, EXPOSURE=None)
    _light(night / "wide.fits", 3, XBINNING=2**40, GAIN=2**33)
    _light(night / "ancient.fits", 4, **{"DATE-OBS": "0001-01-01T00:00:00"})
    _light(night / "nowhere.fits", 5, SITELONG="inf")
    _light(night / "fine.fits", 6)
    bare = _light(tmp_path / "src.fits", 7)
    _mutate(bare, night / "bare.fits", _card("EXPTIME", "120.0"), b"EXPTIME = abc")
    summary = ingest_paths(engine, [night])
    assert summary.ok and summary.new == 7 and summary.warnings == 6
    frames, warned = _frames(engine), _problems(engine, "warning")
    assert frames["negative.fits"].exposure_time_s is None and frames["huge.fits"].exposure_time_s is None
    assert "EXPTIME=-60.0 ignored: exposure_time_s=-60 is out of range 0..1e+06" in warned["negative.fits"]
    assert "EXPTIME=1e+308 ignored" in warned["huge.fits"]
    assert frames["wide.fits"].binning_x is None and frames["wide.fits"].gain is None
    assert "XBINNING=1099511627776 ignored: binning_x=1099511627776 is out of range" in warned["wide.fits"]
    assert frames["ancient.fits"].date_obs is None and frames["ancient.fits"].night is None
    assert "DATE-OBS ignored: date_obs 0001-01-01T00:00:00 is outside" in warned["ancient.fits"]
    assert frames["nowhere.fits"].night is not None  # the UTC night, from a valid DATE-OBS
    assert "SITELONG='inf' is not a valid site_longitude_deg" in warned["nowhere.fits"]
    assert frames["bare.fits"].exposure_time_s == 120.0  # EXPOSURE, the next keyword
    assert "EXPTIME: 'abc' is not a FITS value" in warned["bare.fits"]
    assert frames["fine.fits"].exposure_time_s == 120.0 and "fine.fits" not in warned


def test_impossible_layouts_and_tables_are_problems_naming_the_keyword(engine, tmp_path):
    night = tmp_path / "night"
    good = _light(tmp_path / "src.fits", 1)
    _mutate(good, night / "bitpix7.fits", _card("BITPIX", "16"), _card("BITPIX", "7"))
    _mutate(good, night / "bitpix0.fits", _card("BITPIX", "16"), _card("BITPIX", "0"))
    _mutate(good, night / "nobitpix.fits", _card("BITPIX", "16"), b"COMMENT")
    _mutate(good, night / "half.fits", _card("NAXIS2", "16"), _card("NAXIS2", "16.5"))
    _mutate(good, night / "naxis3.fits", _card("NAXIS", "2"), _card("NAXIS", "3"))
    big = write_fits(tmp_path / "big.fits", nina_header(), shape=(64, 64), seed=2)
    _mutate(big, night / "false_naxis.fits", _card("NAXIS", "2"), _card("NAXIS", "1"))
    _mutate(big, night / "no_naxis.fits", _card("NAXIS", "2"), _card("NAXIS", "0"))
    (night / "false_naxis.fits.gz").write_bytes(gzip.compress((night / "false_naxis.fits").read_bytes()))
    compressed = tmp_path / "c.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(fits.getdata(good), fits.getheader(good))]).writeto(compressed)
    _mutate(compressed, night / "zbitpix.fits.fz", _card("ZBITPIX", "16"), _card("ZBITPIX", "7"))
    _mutate(compressed, night / "znaxis.fits.fz", _card("ZNAXIS1", "16"), _card("ZNAXIS1", "-16"))
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(night / "catalogue.fits")
    shutil.copy2(good, night / "good.fits")
    summary = ingest_paths(engine, [night])
    reasons = {Path(p).name: r for p, r in summary.problems}
    assert summary.new == 1 and set(_frames(engine)) == {"good.fits"}
    assert reasons["bitpix7.fits"].startswith("BITPIX=7 is not a FITS BITPIX")
    assert reasons["bitpix0.fits"].startswith("BITPIX=0 is not a FITS BITPIX")
    assert reasons["nobitpix.fits"].startswith("BITPIX is missing")
    assert reasons["half.fits"].startswith("NAXIS2=16.5 is not a valid NAXIS2")
    assert reasons["naxis3.fits"].startswith("NAXIS3 is missing")
    assert "not a FITS extension: a false NAXIS" in reasons["false_naxis.fits"]
    assert "not a FITS extension: a false NAXIS" in reasons["false_naxis.fits.gz"]
    assert reasons["no_naxis.fits"].startswith("no FITS header where an HDU after HDU 0 should begin")
    assert "a false NAXIS, NAXISn, BITPIX or PCOUNT" in reasons["no_naxis.fits"]
    assert reasons["zbitpix.fits.fz"].startswith("ZBITPIX=7 is not a FITS BITPIX")
    assert reasons["znaxis.fits.fz"].startswith("ZNAXIS1=-16 is not a valid ZNAXIS1")
    assert reasons["catalogue.fits"] == "not an image: the file holds only tables (HDU 1: BinTableHDU)"
    assert _problems(engine, "error") == reasons


# -- 3. corrupt bytes are found while they are read for the hash ---------------------------------------

def test_corrupt_gzip_fz_and_checksums_are_problems(engine, tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    good = _light(tmp_path / "src.fits", 1)
    packed = gzip.compress(good.read_bytes())
    (night / "good.fits.gz").write_bytes(packed)
    crc = bytearray(packed)
    crc[-6] ^= 0xFF  # the stored CRC-32
    (night / "crc.fits.gz").write_bytes(bytes(crc))
    (night / "cut.fits.gz").write_bytes(packed[: len(packed) // 2])
    data = np.random.default_rng(1).normal(1000, 10, (64, 64)).astype(np.int16)
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, fits.Header(nina_header()))])
    hdus.writeto(tmp_path / "c.fits.fz")
    with fits.open(tmp_path / "c.fits.fz") as opened:
        start = opened.fileinfo(1)["datLoc"]
    heap = bytearray((tmp_path / "c.fits.fz").read_bytes())
    heap[start + 600 : start + 1600] = bytes(b ^ 0x5A for b in heap[start + 600 : start + 1600])
    (night / "heap.fits.fz").write_bytes(bytes(heap))
    fits.PrimaryHDU(data, fits.Header(nina_header(**{"DATE-OBS": "2026-11-20T23:00:00"}))).writeto(
        night / "summed.fits", checksum=True)
    flipped = bytearray((night / "summed.fits").read_bytes())
    flipped[-100] ^= 0x01
    (night / "flipped.fits").write_bytes(bytes(flipped))
    summary = ingest_paths(engine, [night])
    reasons = {Path(p).name: r for p, r in summary.problems}
    assert set(_frames(engine)) == {"good.fits.gz", "summed.fits"}
    assert reasons["crc.fits.gz"].startswith("corrupt gzip file: CRC check failed")
    assert reasons["cut.fits.gz"].startswith("corrupt gzip file")
    assert reasons["heap.fits.fz"].startswith("corrupt compressed image in HDU 1")
    assert reasons["flipped.fits"].startswith("corrupt: the data sum to")


def test_eso_checksums_are_checked_on_the_raw_bytes(shared_data, dialects):
    """astropy re-serializes the header before checking CHECKSUM (and its fixes of ESO's
    non-standard cards fail valid checksums); the raw bytes sum to -0."""
    prim = shared_data / "odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim"
    for name in ("ISAAC.2006-04-13T06:32:38.944.fits", "VISIR.2004-09-30T03:17:49.095.fits"):
        read = read_fits(str(prim / name), dialects)
        assert isinstance(read, FileRead), read
        assert "CHECKSUM" in read.header


# -- 4. crashes: names that are not UTF-8, special files, external masters, huge values ---------------

def test_names_that_are_not_utf8_are_stored_losslessly_and_the_run_goes_on(engine, db_url, tmp_path, arcsat_night):
    night = tmp_path / "night"
    night.mkdir()
    shutil.copy2(arcsat_night / "Bias_BIN1_20250602_032138.fits", night / "good.fits")
    bad_folder = os.fsencode(night) + b"/caf\xe9 \\x41"
    os.mkdir(bad_folder)
    source = _light(tmp_path / "src.fits", 1).read_bytes()
    for name in (b"/light\xff.fits", b"/light\xfe.fits"):
        with open(bad_folder + name, "wb") as fh:
            fh.write(source if name.endswith(b"\xff.fits") else source[:3000])
    with open(os.fsencode(night) + b"/ctrl\x1b[31m\n.fits", "wb") as fh:
        fh.write(source.replace(b"M 31", b"M 32"))
    os.mkfifo(night / "pipe.fits")
    summary = ingest_paths(engine, [night])
    assert summary.new == 3 and len(summary.problems) == 2
    reasons = {os.fsencode(p): r for p, r in summary.problems}
    assert reasons[bad_folder + b"/light\xfe.fits"].startswith("truncated")
    assert reasons[os.fsencode(night / "pipe.fits")] == "not a regular file: a FIFO (named pipe)"
    with session_scope(engine) as s:
        paths = set(s.scalars(select(Copy.path)))
        failed = set(s.scalars(select(IngestProblem.path).where(IngestProblem.severity == "error")))
    assert os.fsdecode(bad_folder + b"/light\xff.fits") in paths  # read back as Python names it
    assert os.fsdecode(bad_folder + b"/light\xfe.fits") in failed
    raw = create_engine(make_url(db_url) if "://" in db_url else f"sqlite:///{db_url}")
    with raw.connect() as conn:
        stored = set(conn.execute(text("SELECT path FROM copies")).scalars())
    raw.dispose()
    assert os.fsencode(night).decode() + "/fsencoded:" not in stored
    assert "fsencoded:" + str(night) + "/caf\\xe9 \\x5cx41/light\\xff.fits" in stored
    again = ingest_paths(engine, [night])
    assert again.new == 0 and again.unchanged == 3 and len(again.problems) == 2


def test_an_external_master_with_a_bad_ncombine_fails_nothing_else(engine, tmp_path):
    """NCOMBINE unparseable or 1e400 killed its batch and every later batch, on every re-run."""
    root = tmp_path / "masters"
    header = nina_header("Master Dark", EXPTIME=60.0)
    overflow = write_fits(tmp_path / "a.fits", {**header, "NCOMBINE": 25}, seed=1)
    _mutate(overflow, root / "a_overflow.fits", _card("NCOMBINE", "25"), _card("NCOMBINE", "1E400"))
    bare = write_fits(tmp_path / "b.fits", {**header, "NCOMBINE": 25, "DATE-OBS": "2026-11-21T01:00:00"}, seed=2)
    _mutate(bare, root / "b_bare.fits", _card("NCOMBINE", "25"), b"NCOMBINE= twenty-five")
    for i in range(6):
        _light(root / f"z_light_{i}.fits", 10 + i)
    settings = Settings(workers=1, batch_size=2)
    summary = ingest_paths(engine, [root], settings=settings)
    assert summary.ok and summary.new == 8 and summary.by_type == Counter(master_dark=2, light=6)
    with session_scope(engine) as s:
        assert s.scalars(select(Master.n_combined)).all() == [None, None]


def test_a_light_with_exptime_1e308_breaks_no_later_step(db_url, tmp_path):
    root = tmp_path / "night"
    _light(root / "huge.fits", 1, EXPTIME=1e308, EXPOSURE=1e308)
    _light(root / "fine.fits", 2)
    for i in range(3):
        write_fits(root / f"dark_{i}.fits", nina_header("DARK", **{"DATE-OBS": f"2026-11-21T01:0{i}:00"}), seed=20 + i)
        write_fits(root / f"bias_{i}.fits", nina_header("BIAS", EXPTIME=0.0, EXPOSURE=0.0,
                                                       **{"DATE-OBS": f"2026-11-21T02:0{i}:00"}), seed=30 + i)
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, ["--db", db_url, "-q", *args])
        assert result.exit_code in (0, 1) and result.exception is None or isinstance(result.exception, SystemExit), \
            result.output + repr(result.exception)
        return result.output

    run("ingest", str(root))
    run("masters", "build", "--library", str(tmp_path / "lib"))
    assert "kind" in run("masters", "missing", "--format", "csv")
    assert run("masters", "select", str(root / "huge.fits"), "--explain")


# -- 7. a bad-input corpus mixed with a real night ------------------------------------------------------

ASTROPY_FITS_DATA = Path(fits.__file__).parent / "tests" / "data"
FITS_ENDINGS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz")


def _astropy_says_image(path: Path) -> bool:
    """Independent oracle: astropy opens the file, finds an image HDU with pixels and no data
    checksum failure (its CHECKSUM complaints are left out: it checks re-serialized headers)."""
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, checksum=True) as hdul:
                has = any(h.is_image and h.data is not None and h.data.size > 0 for h in hdul)
        return has and not any("Datasum verification failed" in str(w.message) for w in caught)
    except Exception:  # noqa: BLE001 - anything astropy cannot read is not a good image
        return False


def _corpus(root: Path, night: Path) -> tuple[set[bytes], set[bytes]]:
    """Write the corpus; returns (names that must become frames, names that must be problems)."""
    good, bad = set(), set()
    shutil.copytree(night, root / "night")
    good |= {os.fsencode(p) for p in (root / "night").iterdir() if p.name.lower().endswith(FITS_ENDINGS)}
    shutil.copytree(ASTROPY_FITS_DATA, root / "astropy", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for path in (root / "astropy").rglob("*"):
        if path.is_file() and path.name.lower().endswith(FITS_ENDINGS):
            (good if _astropy_says_image(path) else bad).add(os.fsencode(path))
    mutants = root / "mutants"
    mutants.mkdir()
    source = night / "XO1-b_z_20250602_041008.fits"
    whole = source.read_bytes()
    header_end = whole.index(b"END" + b" " * 77) // 2880 * 2880 + 2880

    def write(name: bytes, data: bytes, expected: set) -> None:
        path = os.fsencode(mutants) + b"/" + name
        with open(path, "wb") as fh:
            fh.write(data)
        expected.add(path)

    for i, cut in enumerate((100, 2880, header_end - 1, header_end + 1, len(whole) // 2, len(whole) - 2881)):
        write(f"cut_{i}.fits".encode(), whole[:cut], bad)
    write(b"empty.fits", b"", bad)
    write(b"text.fits", b"no FITS here\n" * 300, bad)
    write(b"zeros.fits", bytes(len(whole)), bad)

    def card(data: bytes, key: bytes, new: bytes) -> bytes:
        start = data.index(key.ljust(8) + b"= ")
        return data[:start] + new.ljust(80)[:80] + data[start + 80 :]

    write(b"bitpix7.fits", card(whole, b"BITPIX", b"BITPIX  =                    7"), bad)
    write(b"naxis_false.fits", card(whole, b"NAXIS", b"NAXIS   =                    1"), bad)
    write(b"naxis2_half.fits", card(whole, b"NAXIS2", b"NAXIS2  =               1024.5"), bad)
    write(b"exptime_bare.fits", card(whole, b"EXPTIME", b"EXPTIME = abc"), good)
    write(b"exptime_negative.fits", card(whole, b"EXPTIME", b"EXPTIME =                  -60"), good)
    write(b"exptime_huge.fits", card(whole, b"EXPTIME", b"EXPTIME =               1E308"), good)
    write(b"object_control.fits", card(whole, b"OBJECT", b"OBJECT  = 'Dark Shark\x1b[31m'"), good)
    write(b"date_year1.fits", card(whole, b"DATE-OBS", b"DATE-OBS= '0001-01-01T00:00:00'"), good)
    write(b"name_\xff\xfe.fits", whole.replace(b"XO1-b", b"XO1-c", 1), good)
    write(b"name_\x1b[31m_ctrl\n.fits", whole.replace(b"XO1-b", b"XO1-d", 1), good)
    write(b"gz_crc.fits.gz", gzip.compress(whole)[:-8] + b"\0\0\0\0" + gzip.compress(whole)[-4:], bad)
    os.mkfifo(mutants / "pipe.fits")
    bad.add(os.fsencode(mutants / "pipe.fits"))
    os.symlink(mutants / "missing.fits", mutants / "dangling.fits")
    bad.add(os.fsencode(mutants / "dangling.fits"))
    return good, bad


def test_a_corpus_of_bad_files_mixed_with_a_real_night(engine, tmp_path, arcsat_night):
    root = tmp_path / "corpus"
    good, bad = _corpus(root, arcsat_night)
    summary = ingest_paths(engine, [root])
    with session_scope(engine) as s:
        ingested = {os.fsencode(p) for p in s.scalars(select(Copy.path).where(Copy.is_current))}
        problems = {os.fsencode(p): r for p, r in s.execute(
            select(IngestProblem.path, IngestProblem.reason).where(IngestProblem.severity == "error"))}
        n_night = s.scalar(select(func.count()).select_from(Copy).where(Copy.path.startswith(str(root / "night"))))
    assert n_night == 32  # every frame of the real night kept (5 bias, 5 dark, 5 flat, 17 light)
    assert good <= ingested, sorted(good - ingested)
    assert bad <= set(problems), sorted(bad - set(problems))
    assert not ingested & set(problems)
    assert all(reason and "\n" not in reason for reason in problems.values())
    assert {os.fsencode(p) for p, _ in summary.problems} == set(problems)
    again = ingest_paths(engine, [root])  # the run completed: nothing left to do
    assert again.new == again.new_copies == again.changed == 0 and again.unchanged == len(ingested)
