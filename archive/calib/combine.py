"""The combine engine of masters and stacks: frames combined pixel by pixel in blocks of rows.

Pixel code only (numpy and astropy; no database), so that it imports quickly and can run in any
worker process. Masters (:mod:`archive.calib.masters`) and stacks (:mod:`archive.reduce.stack`)
both combine here, so that a method name means one computation:

``median``
    The median of a pixel's values; for an even count the mean of the two middle values
    (``numpy.median``, ``ccdproc.Combiner.median_combine``).
``mean``
    The mean of a pixel's values, weighted by the per-frame ``weights`` when given
    (``numpy.average``).
``sigma_clip``
    The (weighted) mean of the values left by ``astropy.stats.sigma_clip``: centre the median,
    spread the standard deviation, values below ``median - sigma_low * std`` or above
    ``median + sigma_high * std`` rejected, repeated until nothing changes or ``maxiters``
    times (the convention of ``ccdproc.Combiner.sigma_clipping`` followed by
    ``average_combine``).

NaN values are ignored by every method (a registered frame is NaN outside its footprint; raw
calibration frames have none); a pixel without any value is NaN. (Infinite values count as
values for the median and the mean; sigma clipping leaves them out, as astropy does.) The
inputs are read a block of rows at a time (:class:`RowReader`, ``os.pread``), blocks sized to
``memory_limit_mb``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import numpy as np
from astropy.io import fits

from archive.errors import ArchiveError, ConfigError

#: How frames are combined (see the module docstring).
COMBINE_METHODS = ("median", "mean", "sigma_clip")
#: How a stack's inputs are matched in background before they are combined: "none", or
#: "additive" (offsets from :func:`background_level`; :func:`archive.reduce.stack.background_offsets`).
NORMALIZATIONS = ("none", "additive")

#: Bytes per pixel per input frame that one block needs while it is combined, by method: the
#: float32 values (4) plus the larger of the input rows being converted (8 per pixel of one
#: frame) and the method's scratch: the median sorts in place (up to 4 more where pixels have
#: NaN), the mean builds a validity mask and a filled copy (up to 6), sigma clipping a float64
#: copy and masks (up to 12). Measured with ``tracemalloc``, checked by tests/test_combine.py.
_BYTES_PER_VALUE = {"median": 12, "mean": 12, "sigma_clip": 20}
#: Memory set aside besides the blocks: interpreter and libraries, bytes.
_RESERVE_BYTES = 64 * 1024 * 1024
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass(frozen=True)
class CombineSettings:
    """The settings of the combine engine, one vocabulary for masters and stacks.

    Read from ``[combine]`` of the matching rules (``configs/matching/default.toml``) and
    from ``[stack]`` of ``configs/reduction.toml``.

    Attributes
    ----------
    sigma_low, sigma_high : float
        ``sigma_clip``: rejection limits below and above the median, in standard deviations
        (``sigma_lower``, ``sigma_upper`` of ``astropy.stats.sigma_clip``; default 3).
    maxiters : int
        ``sigma_clip``: most clipping iterations (default 5).
    memory_limit_mb : float
        Memory for one combine (its blocks and output), MB of 2**20 bytes.
    """

    sigma_low: float = 3.0
    sigma_high: float = 3.0
    maxiters: int = 5
    memory_limit_mb: float = 2048.0

    @classmethod
    def from_table(cls, table: Mapping, where: str, *, other_keys: Sequence[str] = ()) -> CombineSettings:
        """The settings of a configuration table; absent keys take the defaults.

        Parameters
        ----------
        table : mapping
            The table (``sigma_low``, ``sigma_high``, ``maxiters``, ``memory_limit_mb``).
        where : str
            The table's name for messages, e.g. ``"configs/reduction.toml [stack]"``.
        other_keys : sequence of str
            Further keys the table may hold (read by the caller, e.g. ``method``).

        Raises
        ------
        ConfigError
            An unknown key (the old ``sigma``/``iterations`` included), a value of the wrong
            type, a limit not above 0, fewer than one iteration, or a memory limit not above 0.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(names) - set(other_keys))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; the combine settings are {names}"
                              + (f" (and {list(other_keys)})" if other_keys else ""))
        try:
            settings = cls(**{k: float(table[k]) for k in names if k in table})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: invalid combine setting: {exc}") from exc
        if not (np.isfinite(settings.maxiters) and settings.maxiters == int(settings.maxiters)):
            raise ConfigError(f"{where}: maxiters must be a whole number, not {table['maxiters']!r}")
        settings = replace(settings, maxiters=int(settings.maxiters))
        if not (settings.sigma_low > 0 and settings.sigma_high > 0):
            raise ConfigError(f"{where}: sigma_low and sigma_high must be above 0")
        if settings.maxiters < 1:
            raise ConfigError(f"{where}: maxiters must be at least 1")
        if not settings.memory_limit_mb > 0:
            raise ConfigError(f"{where}: memory_limit_mb must be above 0")
        return settings


class MasterBuildError(RuntimeError, ArchiveError):
    """A master could not be built (unreadable input, mismatched shapes, ...)."""


class RowReader:
    """Blocks of rows of one image HDU, read without loading the whole image.

    Uncompressed images are read block by block with ``os.pread`` (no memory map, so the
    resident memory stays that of the blocks) and scaled by BSCALE/BZERO here (an unsigned
    16-bit image is int16 + 32768); other HDUs (tile-compressed) go through astropy's
    ``section``. Values come back as float32, ADU. ``rows`` of the plain path may be called
    from several threads at once. Only the FITS structure keywords that lay out the data
    (BITPIX, BSCALE, BZERO) are read here; everything else comes from the catalogue.

    Parameters
    ----------
    path : str
    hdu_index : int
    plane : int, optional
        For a cube of shape (planes, ny, nx) (NAXIS3, e.g. the three colour planes of a
        demosaiced frame): the plane read, its rows as those of a 2-D image. None: the HDU
        must be a 2-D image.

    Raises
    ------
    MasterBuildError
        The file cannot be read, the HDU is not a 2-D image (or, with ``plane``, not a cube
        holding that plane), or its data are truncated.
    """

    def __init__(self, path: str, hdu_index: int = 0, plane: int | None = None):
        self.path = path
        self._fd: int | None = None
        self._hdul = None
        try:
            hdul = fits.open(path, memmap=False, mode="readonly", do_not_scale_image_data=True, lazy_load_hdus=True)
            hdu = hdul[hdu_index]
            header = hdu.header
        except (OSError, IndexError, ValueError) as exc:
            raise MasterBuildError(f"{path}: cannot read the image: {exc}") from exc
        shape = tuple(hdu.shape or ()) if hasattr(hdu, "shape") else ()
        plane_offset = 0
        if plane is not None:
            if len(shape) != 3 or not 0 <= plane < shape[0] or isinstance(hdu, fits.CompImageHDU):
                hdul.close()
                raise MasterBuildError(f"{path}: no plane {plane} (image of shape {shape})")
            plane_offset, shape = plane, shape[1:]
        elif len(shape) == 3 and shape[0] == 1 and not isinstance(hdu, fits.CompImageHDU):
            shape = shape[1:]  # a cube of one plane (NAXIS3 = 1) is that plane
        elif len(shape) != 2:
            hdul.close()
            raise MasterBuildError(f"{path}: not a 2-D image")
        if isinstance(hdu, fits.CompImageHDU):
            self.shape = shape
            self._scale, self._zero = 1.0, 0.0  # section applies the scaling
            self._hdul, self._hdu = hdul, hdu
            self.threadsafe = False
            self.native_dtype = None
            return
        self.shape = (int(shape[0]), int(shape[1]))
        self._scale = float(header.get("BSCALE", 1.0))
        self._zero = float(header.get("BZERO", 0.0))
        try:
            self._dtype = np.dtype(_BITPIX_DTYPES[int(header["BITPIX"])])
        except KeyError as exc:
            hdul.close()
            raise MasterBuildError(f"{path}: unsupported BITPIX {header.get('BITPIX')}") from exc
        self._row_bytes = self.shape[1] * self._dtype.itemsize
        self._offset = int(hdu.fileinfo()["datLoc"]) + plane_offset * self.shape[0] * self._row_bytes
        hdul.close()
        try:
            self._fd = os.open(path, os.O_RDONLY)
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            raise MasterBuildError(f"{path}: cannot read the image: {exc.strerror or exc}") from exc
        if size < self._offset + self.shape[0] * self._row_bytes:
            self.close()
            raise MasterBuildError(f"{path}: file is truncated ({size} bytes, the image needs "
                                   f"{self._offset + self.shape[0] * self._row_bytes})")
        self.threadsafe = True
        #: The integer type the values fit exactly (16-bit images, unsigned by BZERO 32768 or
        #: signed), for an exact integer median; None otherwise.
        self.native_dtype = None
        if self._dtype == np.dtype(">i2") and self._scale == 1.0 and self._zero in (0.0, 32768.0):
            self.native_dtype = np.dtype(np.uint16 if self._zero else np.int16)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32, shape (stop - start, nx)."""
        if self._fd is None:
            return np.asarray(self._hdu.section[start:stop], dtype=np.float32)
        nbytes = (stop - start) * self._row_bytes
        raw = os.pread(self._fd, nbytes, self._offset + start * self._row_bytes)
        if len(raw) != nbytes:
            raise MasterBuildError(f"{self.path}: file is truncated")
        block = np.frombuffer(raw, dtype=self._dtype).astype(np.float32).reshape(stop - start, self.shape[1])
        if self._scale != 1.0:
            block *= np.float32(self._scale)
        if self._zero != 0.0:
            block += np.float32(self._zero)
        return block

    def native_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in :attr:`native_dtype` (values exact, no float conversion)."""
        nbytes = (stop - start) * self._row_bytes
        raw = os.pread(self._fd, nbytes, self._offset + start * self._row_bytes)
        if len(raw) != nbytes:
            raise MasterBuildError(f"{self.path}: file is truncated")
        if self.native_dtype == np.uint16:  # stored int16 s, value s + 32768: flip the sign bit
            block = np.frombuffer(raw, dtype=">u2").astype(np.uint16) ^ np.uint16(0x8000)
        else:
            block = np.frombuffer(raw, dtype=">i2").astype(np.int16)
        return block.reshape(stop - start, self.shape[1])

    def full(self) -> np.ndarray:
        """The whole image as float32."""
        return self.rows(0, self.shape[0])

    def close(self) -> None:
        """Release the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._hdul is not None:
            self._hdul.close()


def rows_per_block(n_frames: int, shape: tuple[int, int], memory_limit_mb: float, method: str = "median") -> int:
    """Rows per combine block so that ``n_frames`` blocks and the output fit the memory limit.

    The output (float32, ``shape``, twice: the array and its copy on the way out) and 64 MiB
    for the interpreter are set aside; the rest is divided by ``n_frames * nx`` times the
    bytes one value needs while ``method`` combines it (12 for the median and the mean, 20
    for sigma clipping).

    Parameters
    ----------
    n_frames : int
        Blocks held at once (input frames times worker threads).
    shape : (int, int)
        Output shape (rows, nx), pixels.
    memory_limit_mb : float
        Memory for the blocks and the output, MB (2**20 bytes).
    method : str
        One of :data:`COMBINE_METHODS`.

    Returns
    -------
    int
        Rows per block, between 1 and the output's rows.
    """
    ny, nx = shape
    reserve = 2 * ny * nx * 4 + _RESERVE_BYTES
    per_row = max(1, n_frames) * nx * _BYTES_PER_VALUE[method]
    return int(max(1, min(ny, (int(memory_limit_mb * 2**20) - reserve) // per_row)))


def _check(method: str, weights: Sequence[float] | None, n: int) -> np.ndarray | None:
    """Validate the method and the weights; the weights as float32 (None: equal)."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; use one of {COMBINE_METHODS}")
    if weights is None or len(weights) == 0:
        return None
    if method == "median":
        raise ValueError("per-frame weights apply to 'mean' and 'sigma_clip'; a weighted median is not computed")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{n} frames but {w.size} weights")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError(f"weights must be finite, not negative, and not all 0: {w.tolist()}")
    return w.astype(np.float32)


def combine_values(
    values: np.ndarray, method: str = "median", *, weights: Sequence[float] | None = None,
    sigma_low: float = 3.0, sigma_high: float = 3.0, maxiters: int = 5,
) -> np.ndarray:
    """Combine a block of pixels along its last axis (the frames); the heart of the engine.

    Parameters
    ----------
    values : ndarray, shape (pixels, n_frames)
        One pixel's values contiguous (C order), float32 (NaN: no value) or a 16-bit integer
        type (a median of raw frames: sorted as integers, exact). Scratch: the median sorts it
        in place, sigma clipping writes NaN where it rejects.
    method : {'median', 'mean', 'sigma_clip'}
        See the module docstring.
    weights : sequence of float, optional
        One weight per frame (finite, not negative): the mean and the sigma-clipped mean are
        weighted means (``numpy.average``; the clipping itself is unweighted, as in ccdproc);
        a pixel's weights are those of its valid values. Refused with the median.
    sigma_low, sigma_high : float
        ``sigma_clip`` limits below and above the median, in standard deviations.
    maxiters : int
        ``sigma_clip`` iterations at most.

    Returns
    -------
    ndarray, shape (pixels,), float32
        NaN where a pixel has no value (or, weighted, only values of weight 0).

    Raises
    ------
    ValueError
        An unknown method, weights with the median, or weights not one per frame, finite and
        not negative with a positive sum.
    """
    w = _check(method, weights, values.shape[1])
    if method == "median":
        return _median(values)
    if method == "mean":
        return _mean(values, w)
    from astropy.stats import sigma_clip

    if values.dtype.kind != "f":
        values = values.astype(np.float32)
    # astropy's C implementation (median centre, std, along an axis) writes NaN where it
    # rejects. Missing values go in as a mask over zeros: astropy warns about NaN it is given,
    # and silencing a warning (warnings.catch_warnings) is not safe in threads.
    missing = ~np.isfinite(values)
    if missing.any():
        values[missing] = 0
        values = np.ma.MaskedArray(values, mask=missing, copy=False)
    clipped = sigma_clip(values, sigma_lower=sigma_low, sigma_upper=sigma_high, maxiters=maxiters,
                         cenfunc="median", stdfunc="std", axis=1, masked=False, copy=False)
    return _mean(clipped, w)


def _median(values: np.ndarray) -> np.ndarray:
    """Median along axis 1 ignoring NaN: sort in place, take the two middle values directly.

    Sorting puts NaN last, so a pixel has a NaN exactly when its last sorted value is NaN.
    Pixels without one (all of a raw frame's, nearly all of a registered one's) take the two
    middle values; the others the middle of their first ``n_valid`` values; none valid: NaN.
    """
    n = values.shape[1]
    values.sort(axis=1)
    if n % 2:
        result = values[:, n // 2].astype(np.float32)
    else:
        result = (values[:, n // 2 - 1].astype(np.float32) + values[:, n // 2]) * np.float32(0.5)
    if values.dtype.kind != "f":
        return result
    partial = np.isnan(values[:, -1])
    if partial.any():
        rows = values[partial]  # (pixels with a NaN, n)
        valid = n - np.count_nonzero(np.isnan(rows), axis=1)
        pixel = np.arange(rows.shape[0])
        low = rows[pixel, np.clip((valid - 1) // 2, 0, None)]
        high = rows[pixel, np.clip(valid // 2, 0, n - 1)]
        result[partial] = np.where(valid > 0, (low + high) * np.float32(0.5), np.float32(np.nan))
    return result


def _mean(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """(Weighted) mean along axis 1 ignoring NaN, as float32 (matrix-vector products, fast)."""
    n = values.shape[1]
    w = np.ones(n, dtype=np.float32) if weights is None else weights
    values = np.asarray(values, dtype=np.float32)
    valid = ~np.isnan(values)
    if valid.all():
        return (values @ w) / w.sum()
    total = np.where(valid, values, np.float32(0)) @ w
    norm = valid.astype(np.float32) @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, total / norm, np.float32(np.nan)).astype(np.float32)


def combine_arrays(
    cube: np.ndarray, method: str = "median", *, weights: Sequence[float] | None = None,
    sigma_low: float = 3.0, sigma_high: float = 3.0, maxiters: int = 5,
) -> np.ndarray:
    """Combine images held in memory along axis 0 (the whole cube at once; no memory limit).

    Parameters
    ----------
    cube : ndarray, shape (n_frames, ny, nx)
        NaN: no value.
    method, weights, sigma_low, sigma_high, maxiters
        As :func:`combine_values`.

    Returns
    -------
    ndarray, shape (ny, nx), float32

    Raises
    ------
    ValueError
        As :func:`combine_values`.
    """
    n = cube.shape[0]
    values = np.moveaxis(np.asarray(cube), 0, -1).astype(np.float32, order="C", copy=True).reshape(-1, n)
    return combine_values(values, method, weights=weights, sigma_low=sigma_low, sigma_high=sigma_high,
                          maxiters=maxiters).reshape(cube.shape[1:])


def combine_files(
    paths: Sequence[str],
    *,
    method: str = "median",
    weights: Sequence[float] | None = None,
    hdu_indexes: Sequence[int] | None = None,
    prepare: Callable[[int, np.ndarray, int, int], np.ndarray] | None = None,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    memory_limit_mb: float = 2048.0,
    sigma_low: float = 3.0,
    sigma_high: float = 3.0,
    maxiters: int = 5,
    rows: tuple[int, int] | None = None,
    workers: int = 0,
    plane: int | None = None,
) -> np.ndarray:
    """Combine images pixel by pixel, in blocks of rows that fit ``memory_limit_mb``.

    Parameters
    ----------
    paths : sequence of str
        The input FITS files, all of one shape (ny, nx).
    method : {'median', 'mean', 'sigma_clip'}
        See the module docstring; NaN values are ignored.
    weights : sequence of float, optional
        Per-frame weights of the mean and the sigma-clipped mean (:func:`combine_values`);
        refused with the median.
    hdu_indexes : sequence of int, optional
        The image HDU of each file (default 0).
    prepare : callable, optional
        ``prepare(i, block, start, stop) -> block``: calibrates rows ``start:stop`` of input
        ``i`` before combining (bias and dark subtraction).
    scales : sequence of float, optional
        Each input is multiplied by its scale after ``prepare`` (flats: 1 / their median).
    offsets : sequence of float, optional
        Added to each input after ``prepare`` and ``scales`` (a stack's additive background
        normalization, ADU).
    memory_limit_mb : float
        Memory for the blocks and the output, MB (2**20 bytes; default 2048); see
        :func:`rows_per_block`.
    sigma_low, sigma_high : float
        ``sigma_clip`` limits below and above the median, in standard deviations (default 3).
    maxiters : int
        ``sigma_clip`` iterations at most (default 5).
    rows : (int, int), optional
        Combine only rows ``start:stop`` (a band, e.g. one task of a process pool); default all.
    workers : int
        Threads combining blocks at once (0: one per core, at most 8); the memory limit is
        shared between them.
    plane : int, optional
        Inputs are cubes of shape (planes, ny, nx) (a colour stack's red, green and blue):
        combine this plane of each (:class:`RowReader`). Default: 2-D inputs.

    Returns
    -------
    ndarray, shape (stop - start, nx), float32

    Raises
    ------
    MasterBuildError
        An input cannot be read, is not 2-D (or has no plane ``plane``), or its shape differs
        from the first one's.
    ValueError
        No input, an unknown method, weights refused (:func:`combine_values`), or rows
        outside the image.
    """
    if not paths:
        raise ValueError("nothing to combine")
    w = _check(method, weights, len(paths))
    readers = []
    try:
        for i, path in enumerate(paths):
            readers.append(RowReader(path, hdu_indexes[i] if hdu_indexes else 0, plane))
        shape = readers[0].shape
        for reader in readers:
            if reader.shape != shape:
                raise MasterBuildError(f"{reader.path}: shape {reader.shape} differs from {readers[0].path}'s {shape}")
        n = len(readers)
        nx = shape[1]
        first, last = rows if rows is not None else (0, shape[0])
        if not 0 <= first < last <= shape[0]:
            raise ValueError(f"rows {first}:{last} outside an image of {shape[0]} rows")
        workers = max(1, min(workers or os.cpu_count() or 1, 8))
        if not all(r.threadsafe for r in readers):
            workers = 1
        # blocks fit the memory limit with every worker holding one, and there are a few per
        # worker so that the threads stay evenly busy
        step = min(rows_per_block(n * workers, (last - first, nx), memory_limit_mb, method),
                   max(1, -(-(last - first) // (4 * workers))))
        out = np.empty((last - first, nx), dtype=np.float32)

        # raw 16-bit frames combined by median need no arithmetic: sort their integers (exact,
        # half the memory and about twice as fast as float32)
        native = readers[0].native_dtype
        integer = (method == "median" and prepare is None and scales is None and offsets is None
                   and native is not None and all(r.native_dtype == native for r in readers))

        def one_block(start: int) -> None:
            stop = min(last, start + step)
            # one pixel's values contiguous (pixels x frames): the sort runs along the last axis
            stack = np.empty(((stop - start) * nx, n), dtype=native if integer else np.float32)
            for i, reader in enumerate(readers):
                if integer:
                    stack[:, i] = reader.native_rows(start, stop).reshape(-1)
                    continue
                block = reader.rows(start, stop)
                if prepare is not None:
                    block = prepare(i, block, start, stop)
                if scales is not None:
                    block = block * np.float32(scales[i])
                if offsets is not None:
                    block = block + np.float32(offsets[i])
                stack[:, i] = block.reshape(-1)
            out[start - first:stop - first] = combine_values(
                stack, method, weights=w, sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters,
            ).reshape(stop - start, nx)

        starts = range(first, last, step)
        if workers == 1 or len(starts) == 1:
            for start in starts:
                one_block(start)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one_block, starts))  # numpy's sort, matmul and the reads release the GIL
        return out
    finally:
        for reader in readers:
            reader.close()


def image_median(
    reader: RowReader, prepare: Callable[[int, np.ndarray, int, int], np.ndarray] | None, index: int
) -> float:
    """The median of a whole image, after the calibration step ``prepare`` (flat normalization).

    Parameters
    ----------
    reader : RowReader
        The open image.
    prepare : callable or None
        ``prepare(index, block, 0, ny) -> block``, as in :func:`combine_files`; None: raw values.
    index : int
        The input's position, passed to ``prepare``.

    Returns
    -------
    float
        The median (ADU) of the finite pixels (NaN when none is finite).

    Raises
    ------
    MasterBuildError
        The image cannot be read.
    """
    return float(np.nanmedian(prepare(index, reader.full(), 0, reader.shape[0]) if prepare else reader.full()))


def background_level(reader: RowReader, step: int = 8) -> float:
    """A frame's background: the median of a grid of its pixels, every ``step``-th row and column.

    Stars cover a small fraction of a light, so the median of a regular sample is the sky
    level (as Siril's normalization estimates it from the image's median); NaN (outside a
    registered frame's footprint) is ignored.

    Parameters
    ----------
    reader : RowReader
        The open image (one plane of a colour cube when the reader was opened on it).
    step : int
        Sampling step in rows and columns, pixels.

    Returns
    -------
    float
        The background, ADU (NaN when no sampled pixel is finite).

    Raises
    ------
    MasterBuildError
        The image cannot be read.
    """
    rows = [reader.rows(r, r + 1)[:, ::step] for r in range(0, reader.shape[0], step)]
    sample = np.concatenate(rows, axis=None)
    finite = sample[np.isfinite(sample)]
    return float(np.median(finite)) if finite.size else float("nan")
