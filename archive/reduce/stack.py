"""Stacking registered frames: the combine engine plus a stack's header.

The pixels are combined by :mod:`archive.calib.combine`, the engine masters use too (median,
mean or sigma-clipped mean, NaN outside a frame's footprint ignored, optional per-frame weights,
blocks of rows read with ``os.pread`` within ``memory_limit_mb``). Here: bands of rows spread
over an executor, and the stack's cards (method, count, exposure, dates).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.time import Time

from archive import keywords as kw
from archive.calib.combine import NORMALIZATIONS, RowReader, background_level, combine_files, rows_per_block
from archive.fitsio import product_header, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackJob:
    """One stack to build (picklable).

    Attributes
    ----------
    inputs : sequence of str
        Registered frames, all of one shape.
    output : str
        The stacked file to write.
    method : {'median', 'mean', 'sigma_clip'}
        The combine method (:mod:`archive.calib.combine`).
    sigma_low, sigma_high : float
        ``sigma_clip`` limits below and above the median, standard deviations.
    maxiters : int
        ``sigma_clip`` iterations at most.
    memory_limit_mb : float
        Memory of one combine task (its blocks and its band of the output), MB.
    weights : sequence of float
        One weight per input for the mean and the sigma-clipped mean (empty: equal weights).
    header : dict
        Extra cards.
    drop : tuple of str
        Keywords of the first input's header left out of the stack's (the serial keywords of
        a stack of several units of one model: it is catalogued as the model).
    exposures_s : sequence of float or None
        Exposure time of each input, s: the catalogue's normalized ``exposure_time_s`` (from
        EXPTIME, EXPOSURE, ... whichever the dialect reads). None (or an empty sequence: all
        unknown) for a missing value.
    dates_obs : sequence of str or None
        Start of each input, UTC, ISO 8601: the catalogue's normalized ``date_obs``.
    normalization : {'none', 'additive'}
        Background normalization before combining (:func:`background_offsets`).
    """

    inputs: tuple[str, ...]
    output: str
    method: str = "median"
    sigma_low: float = 3.0
    sigma_high: float = 3.0
    maxiters: int = 5
    memory_limit_mb: float = 512
    weights: tuple[float, ...] = ()
    header: dict = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    exposures_s: tuple[float | None, ...] = ()
    dates_obs: tuple[str | None, ...] = ()
    normalization: str = "none"


def background_offsets(inputs: tuple[str, ...], plane: int | None = None) -> tuple[float, ...]:
    """Additive background normalization: the offset that brings each input to a common sky.

    Each input's background is :func:`archive.calib.combine.background_level` (the median of
    a grid of its pixels); its offset is the median of all the inputs' backgrounds minus its
    own, so the stack keeps the typical sky level. This is the "additive" normalization of
    Siril's stacking (Siril manual, "Stacking: normalization"), without its scale term.

    Parameters
    ----------
    inputs : sequence of str
        Registered frames, 2-D or colour cubes (3, ny, nx).
    plane : int, optional
        The colour plane of cubes (each plane is normalized on its own).

    Returns
    -------
    tuple of float
        One offset per input, ADU (0 for an input whose background cannot be estimated).

    Raises
    ------
    MasterBuildError
        An input cannot be read.
    """
    levels = []
    for path in inputs:
        reader = RowReader(path, 0, plane)
        try:
            levels.append(background_level(reader))
        finally:
            reader.close()
    levels_ = np.array(levels, dtype=float)
    if not np.isfinite(levels_).any():
        return tuple(0.0 for _ in inputs)
    common = float(np.nanmedian(levels_))
    return tuple(0.0 if not np.isfinite(v) else common - float(v) for v in levels_)


def _combine_band(inputs: tuple[str, ...], start: int, stop: int, options: dict) -> np.ndarray:
    """Rows ``start:stop`` of the stack (an executor task, arguments by position: a Dask
    executor reads keywords such as ``workers`` as its own). One thread per task: the
    executor's workers are the parallelism."""
    return combine_files(inputs, rows=(start, stop), workers=1, **options)


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

    Inputs of shape (ny, nx) give an image of that shape; colour cubes of shape (3, ny, nx)
    (demosaiced, registered lights) give a cube, each plane combined by the one engine
    (:func:`archive.calib.combine.combine_files` with ``plane``), written as NAXIS3 = 3. With
    ``job.normalization = 'additive'`` each input (each plane) is first offset to the common
    background (:func:`background_offsets`); STACKNRM records the normalization.

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
        Combine ``parts`` bands of rows in parallel there (:func:`archive.calib.combine.combine_files`
        with ``rows``); each task keeps within ``job.memory_limit_mb``. Default: all in this
        process, on threads (:func:`~archive.calib.combine.combine_files`).
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
        No inputs, an unknown method or normalization, weights with the median or not one
        per input, or as many exposure times or dates as inputs not given.
    MasterBuildError
        An input cannot be read or its shape differs from the first one's.
    """
    if not job.inputs:
        raise ValueError("nothing to stack")
    for name, values in (("exposure times", job.exposures_s), ("dates", job.dates_obs)):
        if values and len(values) != len(job.inputs):
            raise ValueError(f"{len(job.inputs)} inputs but {len(values)} {name}")
    with fits.open(job.inputs[0], mode="readonly") as hdul:
        first_header = hdul[0].header.copy()
        shape = hdul[0].shape  # from the header; the pixels are read by the engine
    ny, nx = shape[-2:]
    planes: list[int | None] = list(range(shape[0])) if len(shape) == 3 else [None]
    bounds = np.linspace(0, ny, max(1, min(parts, ny)) + 1).astype(int)
    if job.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {job.normalization!r}")
    options = {"method": job.method, "weights": job.weights or None, "sigma_low": job.sigma_low,
               "sigma_high": job.sigma_high, "maxiters": job.maxiters, "memory_limit_mb": job.memory_limit_mb}
    offsets = {plane: background_offsets(job.inputs, plane) if job.normalization == "additive" else None
               for plane in planes}
    if executor is None or len(bounds) == 2:
        combined = [combine_files(job.inputs, plane=plane, offsets=offsets[plane], **options) for plane in planes]
    else:
        futures = [[executor.submit(_combine_band, job.inputs, int(a), int(b),
                                    {**options, "plane": plane, "offsets": offsets[plane]})
                    for a, b in itertools.pairwise(bounds)] for plane in planes]
        combined = [np.concatenate([f.result() for f in bands], axis=0) for bands in futures]
    result = combined[0] if planes == [None] else np.stack(combined)
    out = product_header(first_header)
    out[kw.IMAGE_TYPE] = kw.IMAGE_TYPE_VALUES["stacked"]
    out[kw.COMBINE] = (job.method, "combine method")
    out[kw.NCOMBINE] = (len(job.inputs), "number of frames combined")
    out[kw.STACK_NORMALIZATION] = (job.normalization, "background normalization of the inputs")
    total, date_begin, date_end, warnings_ = _exposure_cards(job, out)
    for key in job.drop:
        out.remove(key, ignore_missing=True, remove_all=True)
    for key, value in job.header.items():
        out[key] = value
    write_atomic(job.output, result, out)
    return {
        "output": job.output, "ncombine": len(job.inputs), "total_exposure_s": total,
        "date_begin": date_begin, "date_end": date_end,
        "rows_per_block": rows_per_block(len(job.inputs), (ny, nx), job.memory_limit_mb, job.method),
        "warnings": warnings_,
    }
