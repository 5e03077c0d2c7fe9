"""Overscan and trim (issue 10): a CCD with an overscan strip. The frames are SYNTHETIC (the
shared real sets have no usable overscan section: LCO's say BIASSEC = 'UNKNOWN' and their
TRIMSEC does not fit the cut-down test frames, which is checked here too)."""

from __future__ import annotations

import astropy.units as u
import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from click.testing import CliRunner

from archive import keywords as kw
from archive.calib.overscan import (
    Geometry, detector_geometry, overscan_levels, parse_section, subtract_overscan_rows,
)
from archive.cli import main
from tests.factories import nina_header, write_fits

NY, NX, STRIP = 64, 96, 16  # 80 light-sensitive columns, then a 16-column overscan strip
BIASSEC, TRIMSEC = f"[{NX - STRIP + 1}:{NX},1:{NY}]", f"[1:{NX - STRIP},1:{NY}]"


def test_sections_are_read_checked_and_overridden(tmp_path):
    geometry = detector_geometry({"BIASSEC": BIASSEC, "TRIMSEC": TRIMSEC}, (NY, NX))
    assert geometry == Geometry(BIASSEC, TRIMSEC, ())
    assert parse_section(BIASSEC) == (slice(0, NY), slice(NX - STRIP, NX))
    # DATASEC stands in for a missing TRIMSEC; 'UNKNOWN' is no section
    assert detector_geometry({"BIASSEC": "UNKNOWN", "DATASEC": TRIMSEC}, (NY, NX)) == Geometry(None, TRIMSEC, ())
    # a section outside the image is not used, and the note says why
    outside = detector_geometry({"TRIMSEC": "[11:2037,11:2037]"}, (5, 2027))
    assert outside.trim is None and "lies outside the 2027x5 image" in outside.notes[0]
    # an overscan inside the light-sensitive area, or not spanning the rows, is refused
    assert detector_geometry({"BIASSEC": "[1:16,1:64]", "TRIMSEC": TRIMSEC}, (NY, NX)).overscan is None
    assert detector_geometry({"BIASSEC": f"[81:96,1:{NY - 1}]"}, (NY, NX)).overscan is None
    config = tmp_path / "detector.toml"
    config.write_text('[keywords]\noverscan = ["BIASSEC"]\ntrim = ["TRIMSEC"]\nabsent = ["UNKNOWN"]\n'
                      f'[instruments."Lab CCD"]\noverscan = "{BIASSEC}"\ntrim = ""\n')
    override = detector_geometry({"BIASSEC": "UNKNOWN", "TRIMSEC": TRIMSEC}, (NY, NX), "Lab CCD", config=str(config))
    assert override == Geometry(BIASSEC, None, ())


@pytest.mark.parametrize("orientation", ["columns", "rows"])
def test_block_overscan_equals_ccdproc_on_the_whole_frame(orientation):
    """The per-block subtraction masters use gives ccdproc.subtract_overscan's image."""
    rng = np.random.default_rng(3)
    data = 1000 + rng.normal(0, 5, (NY, NX)) + np.arange(NY)[:, None] * 0.7
    if orientation == "columns":
        section, shape = BIASSEC, (NY, NX)
    else:
        data = data.T.copy()
        section, shape = f"[1:{NY},{NX - STRIP + 1}:{NX}]", (NX, NY)
    geometry = detector_geometry({"BIASSEC": section}, shape)
    assert geometry.overscan == section
    reference = ccdproc.subtract_overscan(CCDData(data, unit=u.adu), fits_section=section, median=True,
                                          overscan_axis=None).data  # ccdproc picks the strip's short axis
    rows = parse_section(section)[0]
    levels = overscan_levels(data[rows]) if orientation == "rows" else None
    blocks = [subtract_overscan_rows(data[a:a + 10].copy(), geometry, levels) for a in range(0, shape[0], 10)]
    np.testing.assert_allclose(np.vstack(blocks), reference, rtol=0, atol=1e-9)


def _ccd_frame(path, image_type, seconds, minute, signal, level, seed):
    """A frame of the synthetic CCD: ``signal`` in the light-sensitive columns, the bias
    ``level`` (ADU, different per frame) plus a row gradient everywhere, noise."""
    rng = np.random.default_rng(seed)
    data = np.zeros((NY, NX)) + level + np.arange(NY)[:, None] * 0.5 + rng.normal(0, 2, (NY, NX))
    data[:, : NX - STRIP] += signal
    header = nina_header(image_type.upper(), EXPTIME=seconds, EXPOSURE=seconds, INSTRUME="Lab CCD",
                         BIASSEC=BIASSEC, TRIMSEC=TRIMSEC, CRPIX1=40.0, CRPIX2=30.0,
                         **{"DATE-OBS": f"2026-11-20T22:{minute:02d}:00"})
    write_fits(path, header, data=np.clip(np.round(data), 0, 65535).astype(np.uint16))
    return data


def test_calibrated_lights_lose_the_strip_and_match_numpy(db_url, tmp_path):
    """Bias (3), flats (3) and lights (3) of a CCD whose bias level changes from frame to
    frame: the master bias is made of overscan-subtracted biases, the calibrated lights are
    overscan-subtracted, bias-subtracted, flat-fielded and trimmed: the numpy reference of
    the same arithmetic, the strip gone, the sections and the shifted WCS in the header."""
    night = tmp_path / "imaging" / "2026-11-20"
    rng = np.random.default_rng(5)
    pattern = rng.normal(0, 3, (NY, NX - STRIP))  # fixed bias structure, removed by the master bias
    flat_response = 1 + 0.05 * rng.random((NY, NX - STRIP))
    for i in range(3):
        _ccd_frame(night / f"bias_{i}.fits", "bias", 0.0, i, pattern, 900 + 40 * i, i)
        _ccd_frame(night / f"flat_{i}.fits", "flat", 2.0, 5 + i, pattern + 20000 * flat_response, 950 - 30 * i, 10 + i)
        _ccd_frame(night / f"light_{i}.fits", "light", 60.0, 10 + i, pattern + 300 * flat_response, 1010 + 25 * i,
                   20 + i)
    config = tmp_path / "config.toml"
    config.write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    result = CliRunner().invoke(main, ["--db", db_url, "night", "2026-11-20", "--root", str(tmp_path / "imaging"),
                                       "--output", str(tmp_path / "out"), "--serial"],
                                env={"ARCHIVE_CONFIG": str(config)}, catch_exceptions=False)
    assert "calibrated" in result.output, result.output

    def raw(pattern_):
        frames = np.stack([fits.getdata(p).astype(np.float64) for p in sorted(night.glob(pattern_))])
        return frames - np.median(frames[:, :, NX - STRIP:], axis=2, keepdims=True)  # overscan per row

    bias = np.median(raw("bias_*.fits"), axis=0)
    flats = raw("flat_*.fits") - bias
    flats /= np.median(flats, axis=(1, 2))[:, None, None]
    flat = np.median(flats, axis=0)[:, : NX - STRIP]
    calibrated = sorted((tmp_path / "out").rglob("light_*_cal.fits"))
    assert len(calibrated) == 3
    for path, light in zip(calibrated, raw("light_*.fits")):
        with fits.open(path) as hdul:
            data, header = hdul[0].data, hdul[0].header
        assert data.shape == (NY, NX - STRIP)  # the strip is gone
        expected = (light - bias)[:, : NX - STRIP] / (flat / np.median(flat))
        # a bad-pixel mask was made from the lights and flats, judged inside the trim section
        # only: the columns next to the overscan strip are not taken for hot pixels
        assert header[kw.BAD_PIXELS].startswith("master_badpix_") and header[kw.BAD_PIXEL_COUNT] == 0
        np.testing.assert_allclose(data, expected, rtol=2e-4, atol=0.05)
        assert abs(np.median(data) - 300 * np.median(flat_response)) < 3  # no bias level left
        assert header[kw.OVERSCAN] == BIASSEC and header[kw.TRIM] == TRIMSEC
        assert header[kw.STEPS].split(",")[0] == "overscan" and header[kw.STEPS].endswith("trim")
        assert header["CRPIX1"] == 40.0 and header["LTV1"] == 0.0  # the cut starts at column 1
        assert "BIASSEC" not in header and "TRIMSEC" not in header
