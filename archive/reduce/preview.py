"""PNG previews of masters and stacks, auto-stretched (astro_reduce's --tmppng/--stkpng).

The stretch is astropy.visualization's ZScale interval (IRAF's display rule) with an asinh
stretch; FITS row 0 is the bottom of the image, so rows are flipped for PNG.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from archive.files import temporary_path
from archive.fitsio import read_pixels


def preview_image(fits_path: str | Path, max_size: int = 1024, hdu: int | None = None):
    """An 8-bit grey image of ``fits_path``, auto-stretched (ZScale, asinh), as a PIL image.

    Images larger than ``max_size`` pixels on a side are binned down by an integer factor; a
    cube (colour) is shown by its first plane. ``hdu`` as in :func:`archive.fitsio.read_pixels`.

    Raises
    ------
    OSError
        The file cannot be read as FITS.
    """
    from astropy.visualization import AsinhStretch, ZScaleInterval
    from PIL import Image

    data, _ = read_pixels(fits_path, hdu)
    while data.ndim > 2:
        data = data[0]
    factor = max(1, int(np.ceil(max(data.shape) / max_size)))
    if factor > 1:
        ny, nx = (s // factor * factor for s in data.shape)
        data = np.nanmean(data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))
    finite = np.isfinite(data)
    fill = float(np.nanmedian(data)) if finite.any() else 0.0
    data = np.where(finite, data, fill)
    vmin, vmax = ZScaleInterval().get_limits(data)
    scaled = np.clip((data - vmin) / ((vmax - vmin) or 1.0), 0.0, 1.0)
    pixels = (AsinhStretch(0.1)(scaled, clip=True) * 255).astype(np.uint8)[::-1]
    return Image.fromarray(pixels)


def preview_png(fits_path: str | Path, max_size: int = 1024, hdu: int | None = None) -> bytes:
    """:func:`preview_image` as PNG bytes (for a page that shows it without writing a file)."""
    buffer = io.BytesIO()
    preview_image(fits_path, max_size, hdu).save(buffer, format="PNG")
    return buffer.getvalue()


def write_preview(fits_path: str | Path, png_path: str | Path | None = None, max_size: int = 1024) -> Path:
    """Write an 8-bit PNG of ``fits_path`` (default: the same name with ``.png``) and return it.

    Images larger than ``max_size`` pixels on a side are binned down by an integer factor.
    """
    png = Path(png_path) if png_path else Path(fits_path).with_suffix(".png")
    tmp = temporary_path(png)
    preview_image(fits_path, max_size).save(tmp, format="PNG")
    os.replace(tmp, png)
    return png
