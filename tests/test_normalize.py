"""Header normalization by dialects: real headers from ../shared/data and synthetic ones
(synthetic where the real sets have gaps: N.I.N.A. CMOS headers, MJD-only, Kelvin, ...)."""

from __future__ import annotations

import datetime as dt
import glob
from pathlib import Path, PurePath

import pytest
from astropy.io import fits

from archive.db.frames import target_key
from archive.ingest.dialects import DialectSet
from archive.ingest.cards import CardIndex
from archive.ingest.headers import read_fits
from archive.ingest.normalize import normalize_header
from archive.ingest.timing import observing_night, parse_datetime
from tests.factories import nina_header


@pytest.fixture(scope="module")
def dialects():
    return DialectSet()


def normalize(dialects, cards: dict, *, name="frame.fits", folders=()):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    return normalize_header(CardIndex(header.tostring()), dialects, path=PurePath(name), folders=folders)


def test_nina_cmos_header(dialects):
    out = normalize(dialects, nina_header("LIGHT"))
    v = out.values
    assert (v["image_type"], v["exposure_time_s"], v["filter_name"]) == ("light", 120.0, "Ha")
    assert (v["gain"], v["offset"], v["set_temp_c"], v["ccd_temp_c"]) == (100.0, 50.0, -10.0, -10.1)
    assert (v["binning_x"], v["binning_y"], v["readout_mode"]) == (1, 1, "Normal")
    assert v["instrument"] == "ZWO ASI2600MM Pro" and v["target_key"] == "m31"
    assert v["ra_deg"] == pytest.approx(10.684708) and v["dec_deg"] == pytest.approx(41.26875)
    assert v["date_obs"] == dt.datetime(2026, 11, 20, 22, 1, 2, 123000)
    # longitude 8.54 E: local mean time 22:35 on the 20th, minus 12 h -> night of the 20th
    assert v["night"] == dt.date(2026, 11, 20)
    assert out.sources["dialect"] == "nina/1"
    assert out.sources["exposure_time_s"] == "EXPTIME" and out.sources["date_obs"] == "DATE-OBS"
    assert out.warnings == []


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Light Frame", "light"), ("LIGHT", "light"), ("object", "light"), ("science", "light"),
        ("Bias Frame", "bias"), ("zero", "bias"), ("Dark Frame", "dark"), ("Flat Field", "flat"),
        ("FLAT", "flat"), ("skyflat", "flat"), ("DOME,LAMP", "flat"), ("DARKFLAT", "dark_flat"),
        ("Master Dark", "master_dark"), ("MasterFlat", "master_flat"), ("WAVE,LAMP", "arc"),
    ],
)
def test_image_type_values(dialects, value, expected):
    out = normalize(dialects, {"IMAGETYP": value, "EXPTIME": 10.0})
    assert out.values["image_type"] == expected
    assert out.sources["image_type"].startswith(f"IMAGETYP={value!r}")


def test_obstype_frame_and_eso_keywords(dialects):
    assert normalize(dialects, {"OBSTYPE": "zero"}).values["image_type"] == "bias"
    assert normalize(dialects, {"FRAME": "Dark", "EXPTIME": 30.0}).values["image_type"] == "dark"
    out = normalize(dialects, {"HIERARCH ESO DPR TYPE": "FLAT,LAMP", "ORIGIN": "ESO"})
    assert out.values["image_type"] == "flat" and out.sources["dialect"] == "eso/1"


def test_generic_type_refined_from_object_then_file_name_then_folders(dialects):
    assert normalize(dialects, {"IMAGETYP": "LIGHT", "OBJECT": "Flat field"}).values["image_type"] == "flat"
    assert normalize(dialects, {"IMAGETYP": "LIGHT"}, name="Dark_300s_001.fits").values["image_type"] == "dark"
    out = normalize(dialects, {"EXPTIME": 5.0}, name="frame_001.fits", folders=("2026-11-20", "Flats"))
    assert out.values["image_type"] == "flat" and "folder 'Flats'" in out.sources["image_type"]
    # a specific type keyword is not overridden by words
    assert normalize(dialects, {"IMAGETYP": "BIAS"}, name="dark_001.fits").values["image_type"] == "bias"


def test_zero_exposure_dark_is_a_bias(dialects):
    out = normalize(dialects, {"IMAGETYP": "DARK", "EXPTIME": 0.0})
    assert out.values["image_type"] == "bias" and "zero exposure" in out.sources["image_type"]


@pytest.mark.parametrize(
    "cards, column, expected",
    [
        ({"EXPOSURE": 30.0}, "exposure_time_s", 30.0),
        ({"ITIME": 4.0}, "exposure_time_s", 4.0),
        ({"FILTNAM": "R"}, "filter_name", "R"),
        ({"FILTER1": "V"}, "filter_name", "V"),
        ({"INSFLNAM": "Ha"}, "filter_name", "Ha"),
        ({"HIERARCH ESO INS FILT1 NAME": "Ks"}, "filter_name", "Ks"),
        ({"CCDTEMP": -20.5}, "ccd_temp_c", -20.5),
        ({"CCD_TEMP": -15.0}, "ccd_temp_c", -15.0),
        ({"TEMPERAT": -5.0}, "ccd_temp_c", -5.0),
        ({"HIERARCH ESO DET TEMP": 80.0}, "ccd_temp_c", pytest.approx(-193.15)),
        ({"SETTEMP": -10.0}, "set_temp_c", -10.0),
        ({"BINNING": 2}, "binning_x", 2),
        ({"CCDBINX": 3}, "binning_x", 3),
        ({"CCDSUM": "2 4"}, "binning_y", 4),
        ({"OBJCTRA": "13 11 52.40"}, "ra_deg", pytest.approx(197.968333, abs=1e-5)),
        ({"OBJCTDEC": "-27 52 41.0"}, "dec_deg", pytest.approx(-27.878056, abs=1e-5)),
    ],
)
def test_keyword_aliases(dialects, cards, column, expected):
    out = normalize(dialects, cards)
    assert out.values[column] == expected
    assert out.sources[column] == next(iter(cards)).removeprefix("HIERARCH ")


def test_time_keyword_forms(dialects):
    split = normalize(dialects, {"DATE-OBS": "2019-04-30", "TIME-OBS": "00:37:54"})
    assert split.values["date_obs"] == dt.datetime(2019, 4, 30, 0, 37, 54)
    assert split.sources["date_obs"] == "DATE-OBS + TIME-OBS"
    ut = normalize(dialects, {"DATE-OBS": "2019-04-30", "UT": "01:02:03.5"})
    assert ut.values["date_obs"] == dt.datetime(2019, 4, 30, 1, 2, 3, 500000)
    beg = normalize(dialects, {"DATE-BEG": "2024-01-02T03:04:05"})
    assert beg.values["date_obs"] == dt.datetime(2024, 1, 2, 3, 4, 5)
    mjd = normalize(dialects, {"MJD-OBS": 60000.5})
    assert mjd.values["date_obs"] == dt.datetime(2023, 2, 25, 12, 0)
    old = normalize(dialects, {"DATE-OBS": "21/06/98", "TIME-OBS": "22:00:00"})
    assert old.values["date_obs"] == dt.datetime(1998, 6, 21, 22, 0)
    tt = normalize(dialects, {"DATE-OBS": "2024-01-01T00:01:09.184", "TIMESYS": "TT"})
    assert tt.values["date_obs"] == dt.datetime(2024, 1, 1, 0, 0, 0)  # TT - UTC = 69.184 s
    assert tt.values["date_obs_s"] == 1704067200


def test_missing_values_are_null_and_reported(dialects):
    out = normalize(dialects, {"OBJECT": "M 42"})
    for column in ("image_type", "exposure_time_s", "date_obs", "instrument", "filter_name", "night"):
        assert out.values[column] is None
    joined = " ".join(out.warnings)
    assert "no image type" in joined and "no date obs" in joined and "no exposure time s" in joined


def test_bad_values_are_reported_not_guessed(dialects):
    out = normalize(dialects, {"EXPTIME": "long", "EXPOSURE": 12.0, "DATE-OBS": "yesterday"})
    assert out.values["exposure_time_s"] == 12.0 and out.sources["exposure_time_s"] == "EXPOSURE"
    assert out.values["date_obs"] is None
    assert any("EXPTIME='long'" in w for w in out.warnings)
    assert any("DATE-OBS" in w for w in out.warnings)


def test_observing_night_rule():
    # 03:39 UTC at longitude -105.8 (New Mexico) is 20:36 local mean time on the 1st
    assert observing_night(dt.datetime(2025, 6, 2, 3, 39), -105.82) == dt.date(2025, 6, 1)
    # just after local midnight still belongs to the evening before
    assert observing_night(dt.datetime(2026, 11, 20, 23, 30), 8.54) == dt.date(2026, 11, 20)
    # no longitude: the UTC date minus 12 h
    assert observing_night(dt.datetime(2026, 11, 21, 11, 59), None) == dt.date(2026, 11, 20)
    assert observing_night(dt.datetime(2026, 11, 21, 12, 0), None) == dt.date(2026, 11, 21)


def test_old_fits_date_is_twentieth_century():
    assert parse_datetime("01/01/00") == (dt.datetime(1900, 1, 1), False)


def test_target_key_folds_names():
    assert target_key("M 31") == target_key("m31") == target_key("M-31") == "m31"
    assert target_key("  ") is None and target_key(None) is None


def test_card_index_agrees_with_astropy_on_every_real_card(shared_data, shared_fits_count):
    """The fast card reader gives astropy's value for every keyword of every real header."""
    files = [f for f in glob.glob(str(shared_data / "**" / "*"), recursive=True) if f.lower().endswith((".fits", ".fit"))]
    compressed = [f for f in glob.glob(str(shared_data / "**" / "*"), recursive=True) if f.lower().endswith(".fz")]
    assert len(files) + len(compressed) == shared_fits_count
    compared = 0
    for name in files:
        with fits.open(name) as hdul:
            for hdu in hdul:
                index = CardIndex(hdu.header.tostring())
                for key in index:
                    expected = hdu.header[key]
                    expected = None if isinstance(expected, fits.card.Undefined) else expected
                    assert index.get(key) == expected, (name, key)
                    compared += 1
    assert compared > 10000


# -- real headers -> expected normalized values (MANIFEST.md of each set) ---------------------

REAL = [
    ("arcsat-uw-astr480/data/20250601/Bias_BIN1_20250602_032138.fits",
     dict(image_type="bias", exposure_time_s=0.0, binning_x=1, set_temp_c=-25.0, instrument="dcam-spare",
          filter_name=None, night=dt.date(2025, 6, 1))),
    ("arcsat-uw-astr480/data/20250601/XO1-b_z_20250602_041008.fits",
     dict(image_type="light", exposure_time_s=60.0, filter_name="z", target="XO1-b", telescope="ARCSAT 0.5-m",
          date_obs=dt.datetime(2025, 6, 2, 4, 10, 14, 288000), night=dt.date(2025, 6, 1))),
    ("arcsat-uw-astr480/data/20250601/domeflat_z_001.fits",
     dict(image_type="flat", exposure_time_s=76.15, filter_name="z")),
    ("sbig-st7-ccdchar-lab/Langford_Zach_CCD/FITS/slitview.00000352.BIAS.FIT",
     dict(image_type="bias", exposure_time_s=0.0, ccd_temp_c=pytest.approx(-4.8178, abs=1e-3), telescope=None,
          date_obs=dt.datetime(2019, 4, 29, 23, 14, 44))),
    ("sbig-st7-ccdchar-lab/PWentCCDStuff/PartTwo/Pencil35.FLAT.FIT",
     dict(image_type="flat", exposure_time_s=35.0, instrument="SBIG ST-7/7E/7XE")),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/ISAAC.2006-04-13T06:32:38.944.fits",
     dict(image_type="light", exposure_time_s=4.0, filter_name="NB_2.25", instrument="ISAAC",
          target="PSR-J1740-3052", ra_deg=pytest.approx(265.20907))),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/NOT.fits",
     dict(image_type="flat", filter_name="g'_SDSS 480_145", binning_x=1, instrument="ALFOSC_FASU")),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/vimos.fits",
     dict(image_type="flat", instrument="VIMOS", date_obs=dt.datetime(2000, 5, 15, 11, 3, 39, 859200))),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/VISIR.2004-09-30T03:17:49.095.fits",
     dict(image_type="light", exposure_time_s=0.01, filter_name="SIC")),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/thar5s.fit",
     dict(image_type="arc", exposure_time_s=5.0, instrument="ArtemisHSC", set_temp_c=0.0)),
    ("odd-dialects-eso-midas-testdata/usr/lib/eso-midas/22FEB/test/prim/ccd.fits",
     dict(image_type=None, exposure_time_s=0.0, date_obs=dt.datetime(1900, 1, 1))),
]


@pytest.mark.parametrize("relative, expected", REAL, ids=[Path(r).name for r, _ in REAL])
def test_real_headers(shared_data, dialects, relative, expected):
    read = read_fits(str(shared_data / relative), dialects, folders=(Path(relative).parent.name,))
    for column, value in expected.items():
        assert read.normalized.values[column] == value, column
