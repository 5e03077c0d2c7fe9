"""Pixel-level reduction on the real ARCSAT night (no database): calibrate, register, stack, preview.

Masters here are built with plain numpy in the test, independently of archive.calib.
"""

from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from archive.calib.select import interpolation_weights
from archive.files import remove_partials
from archive import keywords as kw
from archive.reduce.align import (
    RegistrationJob,
    choose_reference,
    count_stars,
    register_file,
)
from archive.reduce.calibrate import (
    CalibrationJob,
    calibrate_light_file,
)
from archive.reduce.executor import SerialExecutor, make_executor
from archive.reduce.preview import write_preview
from archive.reduce.stack import StackJob, stack_files


def _stack(paths):
    return np.stack([fits.getdata(p).astype(np.float64) for p in paths])


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    """Master bias, bias-subtracted dark and flat of the ARCSAT night, built with numpy."""
    from tests.conftest import SHARED_DATA

    night = SHARED_DATA / "arcsat-uw-astr480" / "data" / "20250601"
    folder = tmp_path_factory.mktemp("masters")
    bias = np.median(_stack(sorted(night.glob("Bias_*.fits"))), axis=0)
    dark = np.median(_stack(sorted(night.glob("Dark_*.fits"))), axis=0) - bias
    flat = np.median(_stack(sorted(night.glob("domeflat_z_*.fits"))), axis=0) - bias
    paths = {}
    for name, data in {"bias": bias, "dark": dark, "flat": flat}.items():
        paths[name] = folder / f"master_{name}.fits"
        fits.PrimaryHDU(data.astype(np.float32)).writeto(paths[name])
    lights = sorted(night.glob("XO1-b_z_*.fits"))
    return {"night": night, "folder": folder, "lights": lights, **paths}


@pytest.fixture(scope="module")
def calibrated(masters, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    results = []
    for light in masters["lights"][:4]:
        job = CalibrationJob(
            light=str(light), output=str(out / f"{light.stem}_cal.fits"), bias=str(masters["bias"]),
            darks=((str(masters["dark"]), 60.0 / 60.0),), dark_method="exact", flat=str(masters["flat"]),
        )
        results.append(calibrate_light_file(job))
    return [r["output"] for r in results]


def test_calibrated_pixels_equal_numpy(masters, calibrated):
    light = fits.getdata(masters["lights"][0]).astype(np.float64)
    bias = fits.getdata(masters["bias"]).astype(np.float64)
    dark = fits.getdata(masters["dark"]).astype(np.float64)
    flat = fits.getdata(masters["flat"]).astype(np.float64)
    flat_norm = flat / np.median(flat)
    flat_norm = np.maximum(flat_norm, 0.01)
    expected = (light - bias - dark * (60.0 / 60.0)) / flat_norm
    with fits.open(calibrated[0]) as hdul:
        got = hdul[0].data
        header = hdul[0].header
    assert header["BITPIX"] == -32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert header[kw.IMAGE_TYPE] == "CALIBRATED"
    assert header[kw.STEPS] == "bias,dark,flat"
    assert header[kw.MASTER_BIAS] == "master_bias.fits"
    assert header[kw.DARK_METHOD] == "exact"
    assert header["OBJECT"].strip() == "XO1-b" and header["EXPTIME"] == 60.0
    assert not list(Path(calibrated[0]).parent.rglob(".*.part"))  # no temporary file left beside the products


def test_scaled_and_interpolated_dark_weights(masters, tmp_path):
    light = masters["lights"][0]
    job = CalibrationJob(light=str(light), output=str(tmp_path / "s.fits"), darks=((str(masters["dark"]), 0.5),),
                         dark_method="scaled")
    calibrate_light_file(job)
    expected = fits.getdata(light).astype(np.float64) - 0.5 * fits.getdata(masters["dark"]).astype(np.float64)
    np.testing.assert_allclose(fits.getdata(tmp_path / "s.fits"), expected, rtol=1e-6, atol=1e-2)
    assert fits.getheader(tmp_path / "s.fits")[kw.DARK_SCALE] == 0.5
    # the least-squares line through darks at 10 s and 30 s, evaluated at 20 s, is their mean
    assert interpolation_weights([10, 30], 20) == pytest.approx([0.5, 0.5])
    assert sum(interpolation_weights([10, 30, 60], 45)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        interpolation_weights([30, 30], 20)


def test_cosmic_ray_cleaning_runs(masters, tmp_path):
    job = CalibrationJob(light=str(masters["lights"][1]), output=str(tmp_path / "cr.fits"), bias=str(masters["bias"]),
                         cosmic_rays=True)
    result = calibrate_light_file(job)
    assert result["steps"] == ["bias", "cosmic_rays"]
    assert fits.getheader(tmp_path / "cr.fits")[kw.COSMIC_RAYS] is True


def test_register_and_stack(calibrated, tmp_path):
    counts = [count_stars(p) for p in calibrated]
    assert all(c["n_stars"] >= 10 for c in counts)
    reference = choose_reference([(c["path"], c["n_stars"]) for c in counts])
    assert reference == max(counts, key=lambda c: c["n_stars"])["path"]
    ref_xy = next(c["xy"] for c in counts if c["path"] == reference)
    results = [
        register_file(RegistrationJob(source=c["path"], output=str(tmp_path / f"r{i}.fits"), reference=reference,
                                      source_xy=c["xy"], reference_xy=ref_xy))
        for i, c in enumerate(counts)
    ]
    assert all(r["ok"] for r in results), results
    assert all(r["warning"] is None for r in results)
    assert fits.getheader(results[0]["output"])[kw.IMAGE_TYPE] == "REGISTERED"
    # the registered frames line up: the brightest star lands on the reference's within 1 px
    ref_star = count_stars(str(tmp_path / f"r{[c['path'] for c in counts].index(reference)}.fits"))["xy"][0]
    for r in results:
        star = count_stars(r["output"])["xy"]
        assert np.min(np.hypot(*(star - ref_star).T)) < 1.0
    inputs = tuple(r["output"] for r in results)
    small = stack_files(StackJob(inputs=inputs, output=str(tmp_path / "stack_small.fits"), memory_limit_mb=0.05))
    assert small["rows_per_block"] < 1024
    exposures = tuple(float(fits.getval(r["output"], "EXPTIME")) for r in results)
    dates = tuple(fits.getval(r["output"], "DATE-OBS") for r in results)
    full = stack_files(StackJob(inputs=inputs, output=str(tmp_path / "stack.fits"), memory_limit_mb=1024,
                                exposures_s=exposures, dates_obs=dates))
    assert full["rows_per_block"] >= 1024
    a, b = fits.getdata(small["output"]), fits.getdata(full["output"])
    np.testing.assert_array_equal(a, b)
    banded = stack_files(StackJob(inputs=inputs, output=str(tmp_path / "stack_bands.fits")), executor=SerialExecutor(),
                         parts=3)
    np.testing.assert_array_equal(fits.getdata(banded["output"]), b)
    np.testing.assert_allclose(a, np.nanmedian(_stack(inputs), axis=0), rtol=1e-6, equal_nan=True)
    header = fits.getheader(full["output"])
    assert header[kw.NCOMBINE] == 4 and header[kw.TOTAL_EXPOSURE] == 240.0
    assert header[kw.IMAGE_TYPE] == "STACKED" and header[kw.DATE_BEGIN] < header[kw.DATE_END]
    png = write_preview(full["output"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_alignment_is_reported(calibrated, tmp_path):
    noise = np.random.default_rng(1).normal(0, 1, (64, 64)).astype(np.float32)
    fits.PrimaryHDU(noise).writeto(tmp_path / "noise.fits")
    result = register_file(RegistrationJob(source=str(tmp_path / "noise.fits"), output=str(tmp_path / "x.fits"),
                                           reference=calibrated[0], source_xy=np.empty((0, 2)),
                                           reference_xy=count_stars(calibrated[0])["xy"]))
    assert not result["ok"] and "too few stars" in result["error"]
    assert not (tmp_path / "x.fits").exists()


def test_large_shift_warns(calibrated, tmp_path):
    c = count_stars(calibrated[0])
    shifted = np.roll(fits.getdata(calibrated[0]), 200, axis=1)
    fits.PrimaryHDU(shifted, header=fits.getheader(calibrated[0])).writeto(tmp_path / "shifted.fits")
    s = count_stars(str(tmp_path / "shifted.fits"))
    result = register_file(RegistrationJob(source=s["path"], output=str(tmp_path / "reg.fits"), reference=calibrated[0],
                                           source_xy=s["xy"], reference_xy=c["xy"]))
    assert result["ok"], result
    assert result["shift_fraction"] > 0.15 and "above 15%" in result["warning"]


def test_executors_and_partials(tmp_path):
    assert SerialExecutor().submit(sum, [1, 2]).result() == 3
    with make_executor("process", 2) as pool:
        assert list(pool.map(abs, [-1, -2])) == [1, 2]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".x.fits.999999999.ab12.part").write_bytes(b"partial")  # writer gone
    (tmp_path / "a" / f".y.fits.{os.getpid()}.ab12.part").write_bytes(b"partial")  # writer alive
    assert remove_partials(tmp_path) == 1
    assert (tmp_path / "a" / f".y.fits.{os.getpid()}.ab12.part").exists()


def test_unknown_exposure_leaves_the_cards_out(tmp_path):
    """A missing exposure time is never written as 0: the cards are left out, with a warning."""
    paths = []
    for i in range(3):
        header = fits.Header({"EXPTIME": 0.0, "DATE-OBS": "25/12/99"})  # raw cards are not read
        fits.PrimaryHDU(np.full((8, 6), float(i), dtype=np.float32), header=header).writeto(tmp_path / f"{i}.fits")
        paths.append(str(tmp_path / f"{i}.fits"))
    result = stack_files(StackJob(inputs=tuple(paths), output=str(tmp_path / "s.fits"),
                                  exposures_s=(60.0, None, 60.0),
                                  dates_obs=("1999-12-25T01:00:00", "1999-12-25T01:02:00", "1999-12-25T01:04:00")))
    header = fits.getheader(tmp_path / "s.fits")
    assert kw.EXPOSURE_TIME not in header and kw.TOTAL_EXPOSURE not in header and kw.DATE_END not in header
    assert header[kw.DATE_BEGIN] == "1999-12-25T01:00:00.000" and result["total_exposure_s"] is None
    assert any("exposure time unknown for 1 of 3" in w for w in result["warnings"])
    assert fits.getdata(tmp_path / "s.fits").shape == (8, 6)
    with pytest.raises(ValueError, match="3 inputs but 2 exposure times"):
        stack_files(StackJob(inputs=tuple(paths), output=str(tmp_path / "t.fits"), exposures_s=(1.0, 2.0)))


def test_read_pixels_finds_the_image_hdu(tmp_path):
    from archive.fitsio import read_pixels

    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(image)]).writeto(tmp_path / "a.fits.fz")
    primary = fits.PrimaryHDU()
    primary.header["OBJECT"] = "M 31"
    fits.HDUList([primary, fits.ImageHDU(image, name="SCI")]).writeto(tmp_path / "b.fits")
    for name in ("a.fits.fz", "b.fits"):
        for hdu in (None, 1):
            data, header = read_pixels(tmp_path / name, hdu)
            np.testing.assert_array_equal(data, image)
    assert read_pixels(tmp_path / "b.fits")[1]["OBJECT"] == "M 31"  # inherited from the primary header
    with pytest.raises(ValueError, match="holds no image"):
        read_pixels(tmp_path / "b.fits", 0)


def test_additive_normalization_matches_backgrounds(tmp_path):
    """Synthesized: one star field under three sky levels (one plane each of colour cubes with a
    different sky per plane, NaN borders as registered frames have). Unnormalized, the median
    stack of the overlap jumps where a frame's border ends; with ``normalization='additive'``
    each input is offset to the median sky (numpy reference), and STACKNRM says so."""
    rng = np.random.default_rng(10)
    ny, nx = 64, 80
    field_ = rng.normal(0, 1, (ny, nx)).astype(np.float32)
    field_[20:23, 30:33] += 500  # a star
    skies = np.array([[100, 200, 300], [140, 260, 330], [90, 180, 290]], dtype=np.float32)  # frame x plane
    paths = []
    for i, sky in enumerate(skies):
        cube = np.stack([field_ + s for s in sky])
        cube[:, :, : 4 * i] = np.nan  # registered: no value left of the frame's footprint
        fits.PrimaryHDU(cube).writeto(tmp_path / f"{i}.fits")
        paths.append(str(tmp_path / f"{i}.fits"))
    plain = stack_files(StackJob(inputs=tuple(paths), output=str(tmp_path / "plain.fits"), method="mean"))
    normed = stack_files(StackJob(inputs=tuple(paths), output=str(tmp_path / "norm.fits"), method="mean",
                                  normalization="additive"))
    assert fits.getval(plain["output"], kw.STACK_NORMALIZATION) == "none"
    assert fits.getval(normed["output"], kw.STACK_NORMALIZATION) == "additive"
    stack = fits.getdata(normed["output"])
    assert stack.shape == (3, ny, nx)
    # numpy reference: each frame offset by (median sky of the three) - its own sky
    cubes = np.stack([fits.getdata(p) for p in paths])  # (frames, planes, ny, nx)
    offsets = np.median(skies, axis=0) - skies
    reference = np.nanmean(cubes + offsets[:, :, None, None], axis=0)
    np.testing.assert_allclose(stack, reference, rtol=1e-4, atol=0.05)
    # the step where frame 2's border ends (column 8) is gone with normalization
    step = lambda image: abs(float(np.median(image[0, :, 8]) - np.median(image[0, :, 7])))  # noqa: E731
    assert step(fits.getdata(plain["output"])) > 5 and step(stack) < 0.5
    with pytest.raises(ValueError, match="normalization"):
        stack_files(StackJob(inputs=tuple(paths), output=str(tmp_path / "x.fits"), normalization="multiplicative"))
