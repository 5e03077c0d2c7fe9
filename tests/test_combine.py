"""The combine engine of masters and stacks (archive.calib.combine), each method checked once
against an independent reference: ``numpy.median``/``numpy.nanmedian``, ``numpy.average``
with weights, ``astropy.stats.sigma_clip`` then the mean. Pixel values are SYNTHETIC (random
numbers written by the tests)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip
from sqlalchemy import select

from archive.calib import RuleBook, build_masters
from archive.calib.combine import (
    _BYTES_PER_VALUE, _RESERVE_BYTES, COMBINE_METHODS, CombineSettings, combine_arrays, combine_files,
    combine_values, rows_per_block,
)
from archive.config import load_settings
from archive.db import session_scope
from archive.db.models import Copy
from archive.errors import ConfigError
from archive.ingest.ingest import ingest_paths
from archive.reduce.config import load_reduction_config
from archive.reduce.executor import SerialExecutor
from archive.reduce.stack import StackJob, stack_files
from tests.factories import nina_header, write_fits

SIGMA = {"sigma_low": 2.0, "sigma_high": 2.5, "maxiters": 3}  # asymmetric, and fewer than astropy's 5


def _frames(n: int, shape=(20, 30), *, holes: float = 0.0, seed: int = 0) -> np.ndarray:
    """SYNTHETIC: ``n`` float32 frames of noise around 100, outliers, and NaN holes."""
    rng = np.random.default_rng(seed)
    cube = rng.normal(100, 5, (n, *shape)).astype(np.float32)
    cube[rng.random(cube.shape) < 0.02] = 1e4  # hot pixels and cosmic rays
    cube[rng.random(cube.shape) < holes] = np.nan
    return cube


def _reference_sigma_clip(cube, weights=None):
    clipped = sigma_clip(cube, axis=0, sigma_lower=SIGMA["sigma_low"], sigma_upper=SIGMA["sigma_high"],
                         maxiters=SIGMA["maxiters"], cenfunc="median", stdfunc="std")
    return np.ma.average(clipped, axis=0, weights=weights).filled(np.nan)


# -- each method against its reference -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the reference, given a pixel without values
def test_median_is_numpy_median_ignoring_nan():
    cube = _frames(9)
    cube[3, 5, 5] = 1e6
    cube[:, 0, 0] = np.nan  # no value at all: NaN
    cube[:4, 1, 1] = np.nan
    np.testing.assert_array_equal(combine_arrays(_frames(6)), np.median(_frames(6), axis=0))  # even: middle two
    np.testing.assert_allclose(combine_arrays(cube, "median"), np.nanmedian(cube, axis=0), rtol=1e-6, equal_nan=True)
    for n in (1, 2, 8):  # odd and even counts of frames, and of valid values per pixel
        holes = _frames(n, holes=0.3, seed=n)
        np.testing.assert_allclose(combine_arrays(holes, "median"), np.nanmedian(holes, axis=0), rtol=1e-6,
                                   equal_nan=True)
    # raw 16-bit frames are sorted as integers: exact
    ints = np.random.default_rng(2).integers(0, 65535, (6, 7, 5)).astype(np.uint16)
    values = np.ascontiguousarray(np.moveaxis(ints, 0, -1)).reshape(-1, 6)
    np.testing.assert_array_equal(combine_values(values, "median").reshape(7, 5),
                                  np.median(ints.astype(np.float64), axis=0))
    with pytest.raises(ValueError, match="weighted median"):
        combine_arrays(cube, "median", weights=np.ones(9))


def test_mean_is_numpy_average_with_weights():
    cube = _frames(7, holes=0.2)
    cube[:, 0, 0] = np.nan
    weights = np.linspace(0.5, 2.0, 7)
    expected = np.ma.average(np.ma.masked_invalid(cube.astype(np.float64)), axis=0, weights=weights).filled(np.nan)
    np.testing.assert_allclose(combine_arrays(cube, "mean", weights=weights), expected, rtol=1e-5, equal_nan=True)
    full = _frames(7)
    np.testing.assert_allclose(combine_arrays(full, "mean", weights=weights),
                               np.average(full.astype(np.float64), axis=0, weights=weights), rtol=1e-5)
    np.testing.assert_allclose(combine_arrays(full, "mean"), np.mean(full.astype(np.float64), axis=0), rtol=1e-5)
    for bad in ([1.0] * 6, [1.0] * 6 + [-1.0], [0.0] * 7, [np.nan] * 7):
        with pytest.raises(ValueError):
            combine_arrays(full, "mean", weights=bad)


@pytest.mark.filterwarnings("ignore:Input data contains invalid values")  # the reference, given NaN
def test_sigma_clip_is_astropy_sigma_clip_then_the_mean():
    cube = _frames(9, holes=0.1)
    cube[3, 5, 5] = 1e6
    cube[:, 0, 0] = np.nan
    got = combine_arrays(cube, "sigma_clip", **SIGMA)
    np.testing.assert_allclose(got, _reference_sigma_clip(cube), rtol=1e-5, equal_nan=True)
    assert got[5, 5] < 200 and np.isnan(got[0, 0])
    weights = np.arange(1.0, 10.0)
    np.testing.assert_allclose(combine_arrays(cube, "sigma_clip", weights=weights, **SIGMA),
                               _reference_sigma_clip(cube, weights), rtol=1e-5, equal_nan=True)
    with pytest.raises(ValueError):
        combine_arrays(cube, "mode")


# -- files, blocks, bands, threads -------------------------------------------------------------------


@pytest.mark.parametrize("method", COMBINE_METHODS)
def test_small_memory_limit_gives_the_same_pixels(tmp_path, method):
    cube = _frames(5, (37, 23), holes=0.05)
    paths = [str(write_fits(tmp_path / f"f{i}.fits", data=cube[i])) for i in range(5)]
    weights = None if method == "median" else [1.0, 2.0, 1.0, 0.5, 1.0]
    options = {"method": method, "weights": weights, **SIGMA}
    whole = combine_arrays(cube, **options)
    # 64 MiB are set aside for the interpreter, twice the output for the result: one row a block
    tiny = (_RESERVE_BYTES + 2 * 37 * 23 * 4 + 5 * 23 * _BYTES_PER_VALUE[method]) / 2**20
    assert rows_per_block(5, (37, 23), tiny, method) == 1
    assert rows_per_block(16, (1024, 1024), 1, method) == 1  # never less than a row
    np.testing.assert_array_equal(combine_files(paths, memory_limit_mb=tiny, workers=1, **options), whole)
    np.testing.assert_array_equal(combine_files(paths, memory_limit_mb=tiny, workers=3, **options), whole)
    np.testing.assert_array_equal(combine_files(paths, **options), whole)  # one block
    np.testing.assert_array_equal(combine_files(paths, rows=(10, 30), **options), whole[10:30])
    with pytest.raises(ValueError):
        combine_files(paths, rows=(30, 40), **options)


@pytest.mark.parametrize("method", COMBINE_METHODS)
def test_blocks_stay_within_the_memory_limit(method):
    """What one block allocates while it is combined stays under the bytes per value that
    ``rows_per_block`` counts (the block's own values included)."""
    values = _frames(16, (100, 500), holes=0.05).reshape(16, -1).T.copy()
    tracemalloc.start()
    try:
        combine_values(values, method, **SIGMA)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak + values.nbytes <= _BYTES_PER_VALUE[method] * values.size


# -- one engine: masters and stacks agree ------------------------------------------------------------


@pytest.mark.parametrize("method", COMBINE_METHODS)
def test_master_and_stack_of_the_same_frames_agree(engine, tmp_path, method):
    start = dt.datetime(2026, 3, 2, 20, 0, 0)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(6):
        when = start + dt.timedelta(minutes=i)
        data = np.clip(rng.normal(1000, 30, (24, 18)), 0, 65535).astype(np.uint16)
        data[rng.random(data.shape) < 0.03] = 60000
        header = nina_header("BIAS", **{"DATE-OBS": when.isoformat(timespec="milliseconds"), "EXPTIME": 0.0,
                                        "EXPOSURE": 0.0, "DATE-LOC": when.isoformat(timespec="milliseconds")})
        paths.append(write_fits(tmp_path / "raw" / f"bias_{i}.fits", header, data=data))
    ingest_paths(engine, [tmp_path / "raw"])
    default = RuleBook().default
    bias = dataclasses.replace(default["bias"], combine=method)
    rules = dataclasses.replace(default, kinds={**default.kinds, "bias": bias}, **SIGMA)
    summary = build_masters(engine, library=tmp_path / "library", kinds=["bias"], rules=rules)
    assert len(summary.built) == 1, summary
    with session_scope(engine) as session:
        master_path = session.scalar(select(Copy.path).where(Copy.frame_id == summary.built[0][1], Copy.is_current))
    master = fits.getdata(master_path)
    stack = stack_files(StackJob(inputs=tuple(str(p) for p in paths), output=str(tmp_path / "stack.fits"),
                                 method=method, **SIGMA), executor=SerialExecutor(), parts=3)
    np.testing.assert_array_equal(fits.getdata(stack["output"]), master)
    raw = np.stack([fits.getdata(p).astype(np.float32) for p in paths])
    np.testing.assert_array_equal(master, combine_arrays(raw, method, **SIGMA))


# -- one vocabulary in both configuration files ------------------------------------------------------


def test_one_configuration_vocabulary(tmp_path):
    stack = load_reduction_config(overrides={"stack": {"sigma_low": 2.0, "maxiters": 4}}).stack
    assert (stack["sigma_low"], stack["sigma_high"], stack["maxiters"], stack["memory_limit_mb"]) == (2.0, 3.0, 4, 512.0)
    rules = RuleBook().default
    assert (rules.sigma_low, rules.sigma_high, rules.maxiters, rules.memory_limit_mb) == (3.0, 3.0, 5, 2048.0)
    for old in ({"sigma": 3.0}, {"iterations": 5}, {"memory_limit": 5}):
        with pytest.raises(ConfigError, match="unknown key"):
            load_reduction_config(load_settings(), overrides={"stack": old})
    assert CombineSettings.from_table({"maxiters": 4.0}, "[combine]").maxiters == 4
    for bad in ({"sigma_low": 0}, {"maxiters": 0}, {"maxiters": 2.5}, {"memory_limit_mb": -1}, {"sigma_high": "x"}):
        with pytest.raises(ConfigError):
            CombineSettings.from_table(bad, "[combine]")
    folder = tmp_path / "rules"
    folder.mkdir()
    default = (RuleBook().folder / "default.toml").read_text()
    (folder / "default.toml").write_text(default.replace("maxiters = 5", "iterations = 5", 1))
    with pytest.raises(ConfigError, match="iterations"):
        RuleBook(folder)
