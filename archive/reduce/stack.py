"""Stacking registered frames: median or sigma-clipped mean, memory bounded.

The frames are read through memory maps a block of rows at a time; a block holds
``n_frames x rows x nx`` float32 values and is sized so that it and its working copies stay
under ``memory_limit_mb``. NaN pixels (outside a registered frame's footprint) are ignored.
Sigma clipping follows astropy's ``sigma_clip`` rule: reject pixels farther than ``sigma``
standard deviations from the median, repeat up to ``iterations`` times or until nothing
changes, then average the survivors.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np

from archive.calib.combine import COMBINE_METHODS
from astropy.io import fits
from astropy.time import Time

from archive import keywords as kw
from archive.fitsio import product_header, write_atomic

log = logging.getLogger(__name__)

METHODS = COMBINE_METHODS
#: Working copies of a block alive at once while combining (sort buffer, masks, result).
_WORKING_COPIES = 3


def nanmedian_axis0(cube: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN (faster than ``np.nanmedian`` for few frames).

    Sorting puts NaN last, so a pixel has a NaN exactly when its last sorted value is NaN.
    Pixels without one (nearly all) take the two middle values; the others the middle of their
    first ``n_valid`` values. All-NaN pixels give NaN.
    """
    ordered = np.sort(cube, axis=0)
    n = cube.shape[0]
    result = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    partial = np.isnan(ordered[-1])
    if partial.any():
        columns = ordered[:, partial]  # (n, pixels with a NaN)
        valid = n - np.count_nonzero(np.isnan(columns), axis=0)
        pixel = np.arange(columns.shape[1])
        low = columns[np.clip((valid - 1) // 2, 0, None), pixel]
        high = columns[np.clip(valid // 2, 0, n - 1), pixel]
        result[partial] = np.where(valid > 0, (low + high) / 2, np.nan)
    return result


def sigma_clipped_mean_axis0(cube: np.ndarray, sigma: float = 3.0, iterations: int = 5) -> np.ndarray:
    """Mean along axis 0 after iterative clipping at ``sigma`` standard deviations from the median."""
    work = cube.copy()
    for _ in range(iterations):
        centre = nanmedian_axis0(work)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            spread = np.nanstd(work, axis=0)
            reject = np.abs(work - centre) > sigma * spread
        if not reject.any():
            break
        work[reject] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        count = np.sum(~np.isnan(work), axis=0)
        total = np.nansum(work, axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def combine(cube: np.ndarray, method: str = "median", sigma: float = 3.0, iterations: int = 5) -> np.ndarray:
    """Combine ``cube`` (n, ny, nx) along axis 0 by ``method`` ('median' or 'sigma_clip').

    Raises
    ------
    ValueError
        Unknown method.
    """
    if method == "median":
        return nanmedian_axis0(cube)
    if method == "sigma_clip":
        return sigma_clipped_mean_axis0(cube, sigma, iterations)
    raise ValueError(f"unknown combine method {method!r}; use one of {METHODS}")


def rows_per_block(n_frames: int, nx: int, memory_limit_mb: float) -> int:
    """Rows combined at once so that the block and its working copies fit in the limit."""
    per_row = n_frames * nx * 4 * (1 + _WORKING_COPIES) + nx * 8
    return max(1, int(memory_limit_mb * 2**20 // per_row))


@dataclass(frozen=True)
class StackJob:
    """One stack to build (picklable).

    Attributes
    ----------
    inputs : sequence of str
        Registered frames, all of one shape.
    output : str
        The stacked file to write.
    method : str
        'median' or 'sigma_clip'.
    sigma, iterations : float, int
        Sigma clipping parameters.
    memory_limit_mb : float
        Upper bound on the pixel buffers, MB.
    header : dict
        Extra cards.
    exposures_s : sequence of float or None
        Exposure time of each input, s: the catalogue's normalized ``exposure_time_s`` (from
        EXPTIME, EXPOSURE, ... whichever the dialect reads). None (or an empty sequence: all
        unknown) for a missing value.
    dates_obs : sequence of str or None
        Start of each input, UTC, ISO 8601: the catalogue's normalized ``date_obs``.
    """

    inputs: tuple[str, ...]
    output: str
    method: str = "median"
    sigma: float = 3.0
    iterations: int = 5
    memory_limit_mb: float = 512
    header: dict = field(default_factory=dict)
    exposures_s: tuple[float | None, ...] = ()
    dates_obs: tuple[str | None, ...] = ()


def combine_rows(
    inputs: Sequence[str], start: int, stop: int, method: str = "median", sigma: float = 3.0,
    iterations: int = 5, memory_limit_mb: float = 512,
) -> np.ndarray:
    """Combine rows ``start:stop`` of the ``inputs`` (a worker task), in blocks that fit the limit.

    Returns
    -------
    ndarray, shape (stop - start, nx), float32

    Raises
    ------
    ValueError
        Inputs of different shapes, or an unknown method.
    """
    handles = [fits.open(path, mode="readonly", memmap=True) for path in inputs]
    try:
        arrays = [h[0].data for h in handles]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"inputs have different shapes: {sorted(shapes)}")
        nx = arrays[0].shape[1]
        block = rows_per_block(len(arrays), nx, memory_limit_mb)
        result = np.empty((stop - start, nx), dtype=np.float32)
        cube = np.empty((len(arrays), min(block, stop - start), nx), dtype=np.float32)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            part = cube[:, : last - first]
            for i, array in enumerate(arrays):
                part[i] = array[first:last]
            result[first - start:last - start] = combine(part, method, sigma, iterations)
        return result
    finally:
        for h in handles:
            h.close()


def _exposure_cards(job: StackJob, out: fits.Header) -> tuple[float | None, str | None, str | None, list[str]]:
    """Set EXPTIME, TOTEXP, DATE-OBS, DATE-BEG and DATE-END from the job's catalogue values.

    A card whose value is unknown for any input is left out, with a warning; never 0.
    """
    n = len(job.inputs)
    exposures = list(job.exposures_s) or [None] * n
    dates = list(job.dates_obs) or [None] * n
    warnings_: list[str] = []
    name = job.output.rsplit("/", 1)[-1]
    total = None
    if all(e is not None for e in exposures):
        total = float(sum(exposures))
        out[kw.EXPOSURE_TIME] = (float(exposures[0]), "[s] exposure of one input frame")
        out[kw.TOTAL_EXPOSURE] = (total, "[s] total exposure of the inputs")
    else:
        out.remove(kw.EXPOSURE_TIME, ignore_missing=True, remove_all=True)
        missing = sum(e is None for e in exposures)
        warnings_.append(f"{name}: exposure time unknown for {missing} of {n} input(s): {kw.EXPOSURE_TIME} and "
                         f"{kw.TOTAL_EXPOSURE} left out")
    date_begin = date_end = None
    if all(d is not None for d in dates):
        starts = [Time(d, format="isot", scale="utc") for d in dates]
        date_begin = min(starts).isot
        out[kw.DATE_OBS] = (date_begin, "start of the first input")
        out[kw.DATE_BEGIN] = (date_begin, "start of the first input")
        if total is not None:
            date_end = max(t + e * u.s for t, e in zip(starts, exposures)).isot
            out[kw.DATE_END] = (date_end, "end of the last input")
        else:
            warnings_.append(f"{name}: {kw.DATE_END} left out (exposure time unknown)")
    else:
        out.remove(kw.DATE_OBS, ignore_missing=True, remove_all=True)
        warnings_.append(f"{name}: DATE-OBS unknown for some inputs: {kw.DATE_OBS}, {kw.DATE_BEGIN} and "
                         f"{kw.DATE_END} left out")
    for message in warnings_:
        log.warning(message)
    return total, date_begin, date_end, warnings_


def stack_files(job: StackJob, executor=None, parts: int = 1) -> dict:
    """Combine ``job.inputs`` into ``job.output`` (float32; temporary name then rename).

    The header is the first input's with IMAGETYP 'STACKED', COMBINE (method), NCOMBINE,
    EXPTIME (the exposure of one input, s), TOTEXP (sum of the inputs' exposures, s), DATE-OBS
    and DATE-BEG (the first input's start), DATE-END (the last input's end). Exposures and
    dates are the catalogue's normalized values handed in the job (``job.exposures_s``,
    ``job.dates_obs``), not the inputs' raw cards; a card whose value is unknown is left out
    with a warning (never written as 0).

    Parameters
    ----------
    job : StackJob
    executor : concurrent.futures.Executor, optional
        Combine ``parts`` bands of rows in parallel there (:func:`combine_rows`); each task keeps
        within ``job.memory_limit_mb``. Default: all in this process.
    parts : int
        Bands of rows (1: one task).

    Returns
    -------
    dict
        ``output``, ``ncombine``, ``total_exposure_s`` (None when unknown), ``date_begin``,
        ``date_end``, ``rows_per_block``, ``warnings`` (list of str).

    Raises
    ------
    ValueError
        No inputs, inputs of different shapes, an unknown method, or as many exposure
        times or dates as inputs not given.
    """
    if not job.inputs:
        raise ValueError("nothing to stack")
    for name, values in (("exposure times", job.exposures_s), ("dates", job.dates_obs)):
        if values and len(values) != len(job.inputs):
            raise ValueError(f"{len(job.inputs)} inputs but {len(values)} {name}")
    with fits.open(job.inputs[0], mode="readonly", memmap=True) as hdul:
        first_header = hdul[0].header.copy()
        ny, nx = hdul[0].data.shape
    bounds = np.linspace(0, ny, max(1, min(parts, ny)) + 1).astype(int)
    args = [(tuple(job.inputs), int(a), int(b), job.method, job.sigma, job.iterations, job.memory_limit_mb)
            for a, b in itertools.pairwise(bounds)]
    if executor is None or len(args) == 1:
        bands = [combine_rows(*a) for a in args]
    else:
        bands = [f.result() for f in [executor.submit(combine_rows, *a) for a in args]]
    result = np.concatenate(bands, axis=0)
    out = product_header(first_header)
    out[kw.IMAGE_TYPE] = kw.IMAGE_TYPE_VALUES["stacked"]
    out[kw.COMBINE] = (job.method, "combine method")
    out[kw.NCOMBINE] = (len(job.inputs), "number of frames combined")
    total, date_begin, date_end, warnings_ = _exposure_cards(job, out)
    for key, value in job.header.items():
        out[key] = value
    write_atomic(job.output, result, out)
    return {
        "output": job.output, "ncombine": len(job.inputs), "total_exposure_s": total,
        "date_begin": date_begin, "date_end": date_end,
        "rows_per_block": rows_per_block(len(job.inputs), nx, job.memory_limit_mb), "warnings": warnings_,
    }
