"""PNG previews of masters and stacks, auto-stretched (astro_reduce's --tmppng/--stkpng).

The stretch is astropy.visualization's ZScale interval (IRAF's display rule) with an asinh
stretch; FITS row 0 is the bottom of the image, so rows are flipped for PNG. A colour cube
(3, ny, nx: red, green, blue) becomes an RGB PNG with one stretch per channel (unlinked: each
plane its own ZScale limits, as PixInsight's unlinked screen transfer function), which
neutralizes the sky background's colour cast (light pollution, a sensor's unequal channel
sensitivities) in the preview; the FITS keeps the measured values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from archive.files import temporary_path
from archive.fitsio import read_pixels


def _bin(data: np.ndarray, factor: int) -> np.ndarray:
    """``data`` (ny, nx) averaged over blocks of ``factor`` x ``factor`` pixels."""
    if factor <= 1:
        return data
    ny, nx = (s // factor * factor for s in data.shape)
    return np.nanmean(data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))


def stretch(data: np.ndarray) -> np.ndarray:
    """One plane (ny, nx) to 8 bits: ZScale limits, asinh stretch, NaN as the median.

    Returns
    -------
    ndarray, shape (ny, nx), uint8
        Rows in the FITS order (not flipped).
    """
    from astropy.visualization import AsinhStretch, ZScaleInterval

    finite = np.isfinite(data)
    fill = float(np.nanmedian(data)) if finite.any() else 0.0
    data = np.where(finite, data, fill)
    vmin, vmax = ZScaleInterval().get_limits(data)
    scaled = np.clip((data - vmin) / ((vmax - vmin) or 1.0), 0.0, 1.0)
    return (AsinhStretch(0.1)(scaled, clip=True) * 255).astype(np.uint8)


def write_preview(fits_path: str | Path, png_path: str | Path | None = None, max_size: int = 1024) -> Path:
    """Write an 8-bit PNG of ``fits_path`` (default: the same name with ``.png``) and return it.

    A 2-D image gives a grey PNG; a cube of three planes (NAXIS3 = 3: red, green, blue) an
    RGB PNG, each channel stretched on its own (see the module docstring). Images larger than
    ``max_size`` pixels on a side are binned down by an integer factor.

    Raises
    ------
    OSError
        The file cannot be read or the PNG written.
    ValueError
        The image is neither 2-D nor a cube of three planes.
    """
    from PIL import Image

    data, _ = read_pixels(fits_path)
    planes = [data] if data.ndim == 2 else list(data) if data.ndim == 3 and data.shape[0] == 3 else None
    if planes is None:
        raise ValueError(f"{fits_path}: a preview needs a 2-D image or 3 colour planes, not shape {data.shape}")
    factor = max(1, int(np.ceil(max(data.shape[-2:]) / max_size)))
    channels = [stretch(_bin(plane, factor))[::-1] for plane in planes]
    pixels = channels[0] if len(channels) == 1 else np.dstack(channels)
    png = Path(png_path) if png_path else Path(fits_path).with_suffix(".png")
    tmp = temporary_path(png)
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, png)
    return png
