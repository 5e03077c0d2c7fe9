"""One-shot colour cameras (issue 10, part 4): the Bayer pattern from the dialects, colour
cubes through the one combine engine, and the real Seestar S50 set (two nights, two units,
no calibration frames) reduced into one colour stack of M 94. Database tests on both backends.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from archive import keywords as kw
from archive.calib.combine import MasterBuildError, RowReader, combine_arrays, combine_files
from archive.cli import main
from archive.db.models import Copy, Frame, Reduction
from archive.db.session import open_catalogue, session_scope
from archive.ingest.dialects import BAYER_PATTERNS, DialectSet, shift_pattern
from archive.ingest.normalize import normalize_header
from archive.reduce.colour import demosaic, luminance
from archive.reduce.preview import write_preview
from tests.conftest import SHARED_DATA, catalogue_url

SEESTAR = SHARED_DATA / "seestar-s50-m94"


# -- the pattern from the headers ------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    ({"BAYERPAT": "GRBG"}, "GRBG"),  # the Seestar, N.I.N.A., ASIAIR, Ekos, SharpCap
    ({"BAYERPAT": "RGGB  ", "XBAYROFF": 0, "YBAYROFF": 0}, "RGGB"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1, "YBAYROFF": 0}, "GRBG"),  # one column on: R G / G B -> G R / B G
    ({"BAYERPAT": "RGGB", "XBAYROFF": 0, "YBAYROFF": 1}, "GBRG"),  # one row on
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1, "YBAYROFF": 1}, "BGGR"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 2, "YBAYROFF": 4}, "RGGB"),  # even offsets: the same cell
    ({"COLORTYP": "BGGR"}, "BGGR"),  # MaxIm DL
    ({"COLORTYP": 0}, None),  # MaxIm DL's monochrome
    ({"BAYERPAT": "rg/gb"}, "RGGB"),
    ({"BAYERPAT": "NONE"}, None),
    ({}, None),
])
def test_bayer_pattern_from_the_header(header, expected):
    out = normalize_header({"IMAGETYP": "Light", **header}, DialectSet())
    assert out.values["bayer_pattern"] == expected
    if expected:
        assert out.sources["bayer_pattern"].startswith(next(k for k in header if k in ("BAYERPAT", "COLORTYP")))
    else:
        assert "bayer_pattern" not in out.sources


def test_an_unknown_pattern_is_not_stored_and_says_why():
    out = normalize_header({"IMAGETYP": "Light", "BAYERPAT": "CYGM", "COLORTYP": "RGGB"}, DialectSet())
    assert out.values["bayer_pattern"] == "RGGB"  # the next keyword gave one
    assert any("BAYERPAT='CYGM' is not a known Bayer pattern" in w for w in out.warnings)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_shifting_the_pattern_follows_the_pixels(pattern):
    """The pattern at (y, x) of a mosaic, read off a synthetic mosaic labelled by colour."""
    cell = np.array(list(pattern)).reshape(2, 2)
    mosaic = np.tile(cell, (3, 3))
    for dy in range(3):
        for dx in range(3):
            assert shift_pattern(pattern, dx, dy) == "".join(mosaic[dy:dy + 2, dx:dx + 2].ravel())


def test_seestar_header_pattern_is_read_without_warnings():
    path = next(SEESTAR.glob("session2/*.fit"))
    header = fits.getheader(path)
    out = normalize_header(header, DialectSet())
    assert out.values["bayer_pattern"] == header["BAYERPAT"].strip() == "GRBG"
    assert not [w for w in out.warnings if "Bayer" in w]


# -- pixels: demosaicing, planes through the combine engine, previews -------------------------------


def test_demosaic_puts_each_colour_in_its_plane():
    """A flat field of colour (R=100, G=200, B=50) seen through each pattern comes back as
    three uniform planes in the order red, green, blue."""
    level = {"R": 100.0, "G": 200.0, "B": 50.0}
    for pattern in BAYER_PATTERNS:
        cell = np.array([level[c] for c in pattern]).reshape(2, 2)
        mosaic = np.tile(cell, (8, 10))
        rgb = demosaic(mosaic, pattern)
        assert rgb.shape == (3, 16, 20) and rgb.dtype == np.float32
        inner = rgb[:, 2:-2, 2:-2]
        assert np.allclose(inner.reshape(3, -1).mean(axis=1), [100, 200, 50]), pattern
        assert np.allclose(luminance(rgb)[2:-2, 2:-2], 350 / 3)
    with pytest.raises(ValueError, match="pattern"):
        demosaic(mosaic, "CYGM")


def test_combine_engine_combines_a_plane_of_cubes(tmp_path):
    rng = np.random.default_rng(3)
    cubes = rng.normal(1000, 30, (5, 3, 40, 24)).astype(np.float32)
    cubes[1, 2, 5:9, 3] = np.nan
    paths = []
    for i, cube in enumerate(cubes):
        paths.append(str(tmp_path / f"c{i}.fits"))
        fits.PrimaryHDU(cube).writeto(paths[-1])
    for plane in range(3):
        for method in ("median", "sigma_clip"):
            got = combine_files(paths, method=method, plane=plane, memory_limit_mb=65, workers=1)
            assert np.allclose(got, combine_arrays(cubes[:, plane], method=method), equal_nan=True)
        band = combine_files(paths, plane=plane, rows=(10, 20), workers=1)
        assert np.allclose(band, combine_arrays(cubes[:, plane])[10:20])
    with pytest.raises(MasterBuildError, match="no plane 3"):
        RowReader(paths[0], 0, 3)
    with pytest.raises(MasterBuildError, match="not a 2-D image"):
        RowReader(paths[0])


def test_preview_of_a_cube_is_rgb(tmp_path):
    rng = np.random.default_rng(1)
    cube = rng.normal(100, 5, (3, 30, 20)).astype(np.float32)
    cube[0, 10:20, 5:15] += 500  # a red square
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(cube).writeto(path)
    png = Image.open(write_preview(path))
    assert png.mode == "RGB" and png.size == (20, 30)
    pixels = np.asarray(png)[::-1]  # PNG rows top down, FITS rows bottom up
    inside, outside = pixels[11:19, 6:14].reshape(-1, 3).mean(axis=0), pixels[22:, :].reshape(-1, 3).mean(axis=0)
    assert inside[0] > 250 and outside[0] < 200  # red where red is
    assert abs(inside[1] - outside[1]) < 40 and abs(inside[2] - outside[2]) < 40  # green, blue: sky only
    fits.PrimaryHDU(cube[:2]).writeto(tmp_path / "two.fits")  # not a colour cube: its first plane, grey
    assert Image.open(write_preview(tmp_path / "two.fits")).mode == "L"


# -- the Seestar set end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seestar(request, tmp_path_factory):
    """The Seestar set (two nights, two units, 17 lights, no calibrations) run once per backend
    through `archive night` (ingest, masters, calibration, measurement and judgement,
    registration, stack, previews)."""
    base = tmp_path_factory.mktemp(f"seestar_{request.param}")
    data = base / "imaging" / "m94"
    shutil.copytree(SEESTAR, data)
    with catalogue_url(request, base) as url:
        env = {"ARCHIVE_CONFIG": str(base / "config.toml")}
        (base / "config.toml").write_text(f'[masters]\nlibrary = "{base / "masters"}"\n')
        night = CliRunner().invoke(main, ["-q", "--db", url, "night", "m94", "--root", str(base / "imaging"), "--output",
                                          str(base / "out"), "--previews", "--serial"], env=env, catch_exceptions=False)
        engine = open_catalogue(url)
        yield {"data": data, "out": base / "out", "engine": engine, "night": night}
        engine.dispose()


def _median_fwhm(image: np.ndarray) -> tuple[float, float, int]:
    """Median FWHM (px) and eccentricity 1 - b/a of the unsaturated, unflagged stars of a 2-D
    image, by SEP's second moments (computed here, not by archive)."""
    import sep

    data = np.ascontiguousarray(np.nan_to_num(image, nan=float(np.nanmedian(image))), dtype=np.float32)
    background = sep.Background(data)
    data = data - background
    found = sep.extract(data, 10, err=background.globalrms, minarea=5)
    ok = (found["flag"] == 0) & (found["peak"] < 30000)
    found = found[ok]
    fwhm = 2.3548 * np.sqrt((found["a"] ** 2 + found["b"] ** 2) / 2)
    return float(np.median(fwhm)), float(np.median(1 - found["b"] / found["a"])), len(found)


def test_seestar_bayer_column_matches_the_raw_headers(seestar):
    with session_scope(seestar["engine"]) as session:
        rows = session.execute(select(Copy.path, Frame.bayer_pattern, Frame.image_type)
                               .join(Frame, Frame.id == Copy.frame_id).where(Frame.image_type == "light")).all()
    assert len(rows) == 17
    for path, pattern, _ in rows:
        assert pattern == fits.getheader(path)["BAYERPAT"].strip()


def test_seestar_gives_one_colour_stack_from_both_nights(seestar):
    assert seestar["night"].exit_code == 0, seestar["night"].output
    assert "rejected" not in seestar["night"].output  # the Seestar's own FWHM limit (configs/quality)
    stacks = sorted((seestar["out"] / "stacks").rglob("*.fits"))
    assert len(stacks) == 1
    with fits.open(stacks[0]) as hdul:
        header, cube = hdul[0].header, hdul[0].data.astype(np.float64)
    raw = fits.getheader(next(seestar["data"].rglob("*.fit")))
    assert (header["NAXIS"], header["NAXIS3"], header["NAXIS2"], header["NAXIS1"]) == (3, 3, raw["NAXIS2"], raw["NAXIS1"])
    assert header[kw.NCOMBINE] == 17
    assert header[kw.STEPS] == "uncalibrated" and header[kw.DEMOSAIC] == "bilinear"
    assert header[kw.MOSAIC_PATTERN] == "GRBG" and "BAYERPAT" not in header
    # three planes that differ: levels and pixels
    medians = [float(np.nanmedian(p)) for p in cube]
    assert len({round(m) for m in medians}) == 3
    assert np.nanmax(np.abs(cube[0] - cube[2])) > 100
    # the stack catalogued as a colour cube, no mosaic, from lights of both nights and both units
    with session_scope(seestar["engine"]) as session:
        stacked = session.scalars(select(Frame).where(Frame.image_type == "stacked")).one()
        assert (stacked.naxis3, stacked.bayer_pattern) == (3, None)
        calibrated = session.scalars(select(Frame).where(Frame.image_type == "calibrated")).all()
        assert len(calibrated) == 17 and {f.naxis3 for f in calibrated} == {3}
        assert {f.bayer_pattern for f in calibrated} == {None}
        lights = session.scalars(select(Frame).where(Frame.image_type == "light")).all()
        assert len({f.night for f in lights}) == 2 and len({f.telescope for f in lights}) == 2
        # two units of one model (serial in TELESCOP): two instruments; the stack is the model's
        assert {f.instrument.name for f in lights} == {"Seestar S50 S50_1d3fe189", "Seestar S50 S50_12d98769"}
        assert {f.instrument.model for f in lights} == {"Seestar S50"}
        assert (stacked.instrument.name, stacked.instrument.serial) == ("Seestar S50", None)
        # provenance: no master applied, the demosaicing recorded
        for reduction in session.scalars(select(Reduction).where(Reduction.step == "calibrate")):
            assert reduction.parameters["masters"] == {}
            assert reduction.parameters["demosaic"] == {"method": "bilinear", "pattern": "GRBG"}
    png = Image.open(stacks[0].with_suffix(".png"))
    assert png.mode == "RGB"


def test_seestar_stack_stars_are_aligned(seestar):
    """Stars of the stack (luminance) are about as sharp and round as in one frame: a frame
    misregistered by a pixel or two would double or smear them."""
    stack = next((seestar["out"] / "stacks").rglob("*.fits"))
    fwhm, eccentricity, n = _median_fwhm(luminance(fits.getdata(stack).astype(np.float32)))
    singles = [_median_fwhm(luminance(fits.getdata(p).astype(np.float32)))
               for p in sorted(seestar["out"].rglob("calibrated/*.fits"))[::4]]
    single_fwhm = float(np.median([s[0] for s in singles]))
    single_ecc = float(np.median([s[1] for s in singles]))
    assert n >= 20
    assert fwhm <= 1.2 * single_fwhm, (fwhm, single_fwhm)
    assert eccentricity <= single_ecc + 0.1, (eccentricity, single_ecc)


def test_an_instrument_has_its_own_limits_of_a_rule():
    """configs/quality [instruments."NAME".limits]: the Seestar's stars may be wider than 5"."""
    from archive.calib.quality import judge, load_quality_rules, parse_rules
    from archive.config import InstrumentName
    from archive.errors import ConfigError

    rules = load_quality_rules()
    frames = [(1, "light", "g", {"fwhm_arcsec": 6.5})]
    assert [f.rule for f in judge(rules, frames)] == ["fwhm_absolute"]
    assert judge(rules.for_instrument("Seestar S50"), frames) == []
    unit = InstrumentName("Seestar S50 S50_1d3fe189", "Seestar S50")  # one unit: its model's limits
    assert judge(rules.for_instrument(unit), frames) == []
    assert [f.limit for f in judge(rules.for_instrument("Seestar S50"), [(1, "light", "g", {"fwhm_arcsec": 11.0})])] == [10.0]
    assert rules.for_instrument("another camera") is rules
    with pytest.raises(ConfigError, match="no rule 'nonsense'"):
        parse_rules({"rule": [], "instruments": {"X": {"limits": {"nonsense": {"max": 1}}}}})


def test_bilinear_demosaic_is_colour_demosaicings(shared_data):
    """archive's float32 bilinear demosaicing equals colour-demosaicing's
    demosaicing_CFA_Bayer_bilinear on a real Seestar S50 mosaic, for every Bayer pattern."""
    import colour_demosaicing

    from archive.reduce.colour import demosaic

    path = sorted((shared_data / "seestar-s50-m94").rglob("*.fit*"))[0]
    mosaic = fits.getdata(path).astype(np.float32)[:400, :300]
    for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
        ours = demosaic(mosaic, pattern)
        theirs = np.moveaxis(colour_demosaicing.demosaicing_CFA_Bayer_bilinear(mosaic, pattern), -1, 0)
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3 * float(np.median(mosaic)))
