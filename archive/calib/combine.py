"""Combining images pixel by pixel in blocks of rows, within a memory limit.

Pixel code only (numpy and astropy.io.fits; no database), so that it imports quickly and can
run in any worker process. ccdproc's conventions: the median of an even count is the mean of
the two middle values (``numpy.median``); the sigma-clipped mean uses ``astropy.stats.sigma_clip``
with a median centre and the standard deviation (``ccdproc.Combiner.sigma_clipping``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy.io import fits

from archive.errors import ArchiveError

#: How frames are combined: a median, or a sigma-clipped mean.
COMBINE_METHODS = ("median", "sigma_clip")

#: Bytes per pixel per input frame that one combine block needs (float32 stack, sort buffer,
#: the input block being converted), used to size blocks to the memory limit.
_BYTES_PER_PIXEL_PER_FRAME = 12
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


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

    Raises
    ------
    MasterBuildError
        The file cannot be read, the HDU is not a 2-D image, or its data are truncated.
    """

    def __init__(self, path: str, hdu_index: int = 0):
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
        if len(shape) != 2:
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
        self._offset = int(hdu.fileinfo()["datLoc"])
        hdul.close()
        self._row_bytes = self.shape[1] * self._dtype.itemsize
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


def rows_per_block(n_frames: int, shape: tuple[int, int], memory_limit_bytes: int) -> int:
    """Rows per combine block so that ``n_frames`` blocks and the output fit the memory limit.

    The output (float32, the whole image) and one input frame's worth of scratch are set aside;
    the rest is divided by ``n_frames * nx * 12`` bytes per row.

    Parameters
    ----------
    n_frames : int
        Blocks held at once (input frames times worker threads).
    shape : (int, int)
        Image shape (ny, nx), pixels.
    memory_limit_bytes : int
        Memory for the blocks and the output, bytes.

    Returns
    -------
    int
        Rows per block, between 1 and ny.
    """
    ny, nx = shape
    reserve = 2 * ny * nx * 4 + 64 * 1024 * 1024
    per_row = max(1, n_frames) * nx * _BYTES_PER_PIXEL_PER_FRAME
    return int(max(1, min(ny, (memory_limit_bytes - reserve) // per_row)))


def combine_files(
    paths: Sequence[str],
    *,
    method: str = "median",
    hdu_indexes: Sequence[int] | None = None,
    prepare: Callable[[int, np.ndarray, int, int], np.ndarray] | None = None,
    scales: Sequence[float] | None = None,
    memory_limit_bytes: int = 2 * 1024**3,
    sigma_low: float = 3.0,
    sigma_high: float = 3.0,
    maxiters: int = 5,
    workers: int = 0,
) -> np.ndarray:
    """Combine images pixel by pixel, in blocks of rows that fit ``memory_limit_bytes``.

    Parameters
    ----------
    paths : sequence of str
        The input FITS files, all of one shape (ny, nx).
    method : {'median', 'sigma_clip'}
        Pixel-wise median (the mean of the two middle values for an even count, as
        ``numpy.median``), or the mean of the values left by ``astropy.stats.sigma_clip``
        (median centre, standard deviation, ``sigma_low``/``sigma_high``, ``maxiters``: the
        convention of ``ccdproc.Combiner.sigma_clipping``).
    hdu_indexes : sequence of int, optional
        The image HDU of each file (default 0).
    prepare : callable, optional
        ``prepare(i, block, start, stop) -> block``: calibrates rows ``start:stop`` of input
        ``i`` before combining (bias and dark subtraction).
    scales : sequence of float, optional
        Each input is multiplied by its scale after ``prepare`` (flats: 1 / their median).
    memory_limit_bytes : int
        Memory for the blocks and the output, bytes (default 2 GiB).
    sigma_low, sigma_high : float
        ``sigma_clip`` bounds below and above the median, in standard deviations (default 3).
    maxiters : int
        ``sigma_clip`` iterations (default 5).
    workers : int
        Threads combining blocks at once (0: one per core, at most 8); the memory limit is
        shared between them.

    Returns
    -------
    ndarray, shape (ny, nx), float32

    Raises
    ------
    MasterBuildError
        An input cannot be read, is not 2-D, or its shape differs from the first one's.
    ValueError
        No input, or an unknown method.
    """
    if not paths:
        raise ValueError("nothing to combine")
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}")
    readers = []
    try:
        for i, path in enumerate(paths):
            readers.append(RowReader(path, hdu_indexes[i] if hdu_indexes else 0))
        shape = readers[0].shape
        for reader in readers:
            if reader.shape != shape:
                raise MasterBuildError(f"{reader.path}: shape {reader.shape} differs from {readers[0].path}'s {shape}")
        n = len(readers)
        ny, nx = shape
        workers = max(1, min(workers or os.cpu_count() or 1, 8))
        if not all(r.threadsafe for r in readers):
            workers = 1
        # blocks fit the memory limit with every worker holding one, and there are a few per
        # worker so that the threads stay evenly busy
        step = min(rows_per_block(n * workers, shape, memory_limit_bytes), max(1, -(-ny // (4 * workers))))
        out = np.empty(shape, dtype=np.float32)

        # raw 16-bit frames combined by median need no arithmetic: sort their integers (exact,
        # half the memory and about twice as fast as float32)
        native = readers[0].native_dtype
        integer = (method == "median" and prepare is None and scales is None and native is not None
                   and all(r.native_dtype == native for r in readers))

        def one_block(start: int) -> None:
            stop = min(ny, start + step)
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
                stack[:, i] = block.reshape(-1)
            out[start:stop] = _combine_block(stack, method, sigma_low, sigma_high, maxiters).reshape(stop - start, nx)

        starts = range(0, ny, step)
        if workers == 1 or len(starts) == 1:
            for start in starts:
                one_block(start)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one_block, starts))  # numpy's sort and the reads release the GIL
        return out
    finally:
        for reader in readers:
            reader.close()


def _combine_block(stack: np.ndarray, method: str, sigma_low: float, sigma_high: float, maxiters: int) -> np.ndarray:
    """Combine a (pixels, frames) block along the frames axis; returns float32 (pixels,)."""
    n = stack.shape[1]
    if method == "median":
        stack.sort(axis=1)
        if n % 2:
            return stack[:, n // 2].astype(np.float32)
        return (stack[:, n // 2 - 1].astype(np.float32) + stack[:, n // 2]) * np.float32(0.5)
    from astropy.stats import sigma_clip

    clipped = sigma_clip(stack, sigma_lower=sigma_low, sigma_upper=sigma_high, maxiters=maxiters,
                         cenfunc="median", stdfunc="std", axis=1, masked=True, copy=False)
    return np.ma.mean(clipped, axis=1).filled(np.nan).astype(np.float32)


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
