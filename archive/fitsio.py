"""Reading pixels and writing products: float32 FITS, temporary name, then rename.

Temporary names and the clean-up after interrupted writers are :mod:`archive.files`'s
(:func:`~archive.files.temporary_path`, :func:`~archive.files.remove_partials`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Sequence

import numpy as np
from astropy.io import fits

from archive.files import fsync_dir, temporary_path
from archive import keywords as kw

#: Header keywords of a celestial WCS (FITS WCS papers I and II, the AIPS CROTA/CDELT
#: convention, SIP distortion): what a registered frame takes from its reference, and all a
#: footprint's WCS is built from.
WCS_KEYWORD = re.compile(r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CUNIT\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
                         r"LONPOLE|LATPOLE|RADESYSa?|RADECSYS|EQUINOX|[AB]P?_\d+_\d+|[AB]P?_ORDER)$")


def _image_index(hdul: fits.HDUList) -> int:
    """Index of the first HDU holding an image (as ingest chooses ``Frame.hdu_index``)."""
    for index, hdu in enumerate(hdul):
        if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
            return index
    raise ValueError("no HDU of the file holds an image")


def read_pixels(path: str | Path, hdu: int | None = None, dtype=np.float64) -> tuple[np.ndarray, fits.Header]:
    """The image of ``path`` and its header; the file is opened read-only.

    Parameters
    ----------
    path : str or Path
        Any FITS form astropy reads: plain, multi-extension (MEF), ``.gz``, tile-compressed
        ``.fz``.
    hdu : int, optional
        Index of the HDU holding the image: the catalogue's ``Frame.hdu_index`` (0 for a
        simple file; 1 for a ``.fz`` file, whose primary HDU is empty; the image extension of
        a MEF file). Default: the first HDU with an image, the rule ingest uses.
    dtype : numpy dtype
        Type of the returned array, in native byte order (BZERO/BSCALE applied).

    Returns
    -------
    data : ndarray
        A cube of one plane (NAXIS3 = 1, as some programs write a mono frame) comes back as
        that plane (ny, nx): every step then treats it as the 2-D image it is.
    header : Header
        The image HDU's header; for an image in an extension, completed with the primary
        header's cards it lacks (OBJECT, DATE-OBS, ... often live there), so that a product
        made from it describes the same exposure. Structural cards are not inherited.

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError
        No HDU holds an image, or ``hdu`` holds none.
    IndexError
        ``hdu`` is beyond the file's last HDU.
    """
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        index = _image_index(hdul) if hdu is None else hdu
        if hdul[index].data is None:
            raise ValueError(f"{path}: HDU {index} holds no image")
        data = np.asarray(hdul[index].data).astype(np.dtype(dtype).newbyteorder("="), copy=False)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
        header = hdul[index].header  # the caller's own: the file is closed, nothing else holds it (a copy costs 5 ms)
        if index > 0:
            for card in hdul[0].header.cards:
                if card.keyword and card.keyword not in kw.STRUCTURAL and card.keyword not in header \
                        and card.keyword not in ("COMMENT", "HISTORY"):
                    header.append(card)
    return data, header


def read_dark_model(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The slope (ADU/s, primary HDU) and intercept (ADU, extension
    :data:`archive.keywords.INTERCEPT`) of a dark model (:mod:`archive.calib.ladder`).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    slope, intercept : ndarray (ny, nx), float64
        The dark of exposure t s is ``intercept + slope * t``.

    Raises
    ------
    OSError
        The file cannot be read.
    KeyError
        The file has no intercept extension (it is no dark model).
    """
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        slope = np.asarray(hdul[0].data, dtype=np.float64)
        intercept = np.asarray(hdul[kw.INTERCEPT].data, dtype=np.float64)
    return slope, intercept


def product_header(source: fits.Header) -> fits.Header:
    """A copy of ``source`` without the keywords that describe raw pixel storage or the HDU
    structure (:data:`keywords.DROPPED`, :data:`keywords.STRUCTURAL`)."""
    header = source.copy()
    for key in kw.DROPPED + kw.STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def set_card(header: fits.Header, key: str, value, comment: str = "") -> None:
    """Set ``key``; a long string value is cut to fit one card, the comment kept only if it fits."""
    if isinstance(value, str):
        value = value[:68]
        if len(value) + len(comment) > 45:
            comment = ""
    header[key] = (value, comment) if comment else value


def write_atomic(path: str | Path, data: np.ndarray, header: fits.Header,
                 extensions: Sequence[tuple[str, np.ndarray]] = (), dtype=np.float32) -> Path:
    """Write ``data`` as FITS of ``dtype`` (float32; a mask uint8) to ``path`` through a
    temporary name and a rename.

    ``extensions`` (name, image) follow the primary HDU as float32 image extensions of those
    names (a dark model's intercept, :mod:`archive.calib.ladder`).

    A reader never sees a partial file at ``path``: either the previous file (or none) or the
    complete new one; the file and its folder are flushed to disk. The temporary file
    (:func:`archive.files.temporary_path`) of an interrupted write is removed by
    :func:`archive.files.remove_partials`. Header cards that do not follow the standard (as
    raw headers carry them) are fixed silently (``output_verify="silentfix"``), not refused.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    hdu = fits.HDUList([fits.PrimaryHDU(np.asarray(data, dtype=dtype), header=header)] + [
        fits.ImageHDU(np.asarray(image, dtype=np.float32), name=name) for name, image in extensions])
    try:
        with open(tmp, "wb") as fh:
            hdu.writeto(fh, output_verify="silentfix")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
