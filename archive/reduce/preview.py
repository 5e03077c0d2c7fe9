"""PNG previews of masters, stacks and lights, auto-stretched (astro_reduce's --tmppng/--stkpng).

The stretch is astropy.visualization's ZScale interval (IRAF's display rule) with an asinh
stretch; FITS row 0 is the bottom of the image, so rows are flipped for PNG. A colour image
(a cube of three planes, NAXIS3 = 3, as colour cameras' stacks are written) is stretched plane
by plane (unlinked: each plane its own ZScale limits, as PixInsight's unlinked screen transfer
function, which neutralizes the sky's colour cast in the preview; the FITS keeps the measured
values) and shown as RGB. One stretch for the files written beside products
(:func:`write_preview`) and for the thumbnails of reports (:func:`preview_png`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from archive.files import temporary_path
from archive.fitsio import read_pixels


def _bin(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks of the last two axes (edges cut), NaN ignored."""
    if factor <= 1:
        return data
    ny, nx = (s // factor * factor for s in data.shape[-2:])
    lead = data.shape[:-2]
    blocks = data[..., :ny, :nx].reshape(*lead, ny // factor, factor, nx // factor, factor)
    return np.nanmean(blocks, axis=(-3, -1))


def _stretch_plane(plane: np.ndarray) -> np.ndarray:
    """One plane to 8 bits: ZScale limits, then asinh (NaN shown as the median)."""
    from astropy.visualization import AsinhStretch, ZScaleInterval

    finite = np.isfinite(plane)
    fill = float(np.median(plane[finite])) if finite.any() else 0.0
    plane = np.where(finite, plane, fill)
    vmin, vmax = ZScaleInterval().get_limits(plane)
    scaled = np.clip((plane - vmin) / ((vmax - vmin) or 1.0), 0.0, 1.0)
    return (AsinhStretch(0.1)(scaled, clip=True) * 255).astype(np.uint8)


def stretch(data: np.ndarray, max_size: int = 1024) -> np.ndarray:
    """Auto-stretch an image to 8 bits for display.

    Parameters
    ----------
    data : ndarray
        A 2-D image (ny, nx), or a colour cube (3, ny, nx) in FITS order (R, G, B planes).
        Any other cube is shown by its first plane.
    max_size : int
        Images larger than this many pixels on a side are binned down by an integer factor
        (block mean).

    Returns
    -------
    ndarray of uint8
        (ny', nx') grey or (ny', nx', 3) RGB, rows flipped so that FITS row 0 is at the bottom.

    Raises
    ------
    ValueError
        ``data`` has fewer than two axes.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim < 2:
        raise ValueError(f"an image has at least two axes, not shape {data.shape}")
    while data.ndim > 3:
        data = data[0]
    colour = data.ndim == 3 and data.shape[0] == 3
    if data.ndim == 3 and not colour:
        data = data[0]
    factor = max(1, int(np.ceil(max(data.shape[-2:]) / max_size)))
    data = _bin(data, factor)
    if colour:
        return np.stack([_stretch_plane(p) for p in data], axis=-1)[::-1]
    return _stretch_plane(data)[::-1]


def preview_png(fits_path: str | Path, max_size: int = 1024, hdu: int | None = None) -> bytes:
    """The auto-stretched preview of ``fits_path`` as PNG bytes (nothing written).

    Parameters
    ----------
    fits_path : str or Path
    max_size : int
        Largest side, pixels (:func:`stretch`).
    hdu : int, optional
        The HDU holding the image (``Frame.hdu_index``); default the first image.

    Returns
    -------
    bytes
        An 8-bit grey PNG, or RGB for a colour cube (NAXIS3 = 3).

    Raises
    ------
    OSError, ValueError
        The file cannot be read or holds no image (:func:`archive.fitsio.read_pixels`).
    """
    from PIL import Image

    data, _ = read_pixels(fits_path, hdu=hdu)
    buffer = io.BytesIO()
    Image.fromarray(stretch(data, max_size)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_preview(fits_path: str | Path, png_path: str | Path | None = None, max_size: int = 1024) -> Path:
    """Write the PNG of :func:`preview_png` (default: the same name with ``.png``) and return it.

    Written to a temporary name, then renamed.
    """
    png = Path(png_path) if png_path else Path(fits_path).with_suffix(".png")
    tmp = temporary_path(png)
    tmp.write_bytes(preview_png(fits_path, max_size))
    os.replace(tmp, png)
    return png
