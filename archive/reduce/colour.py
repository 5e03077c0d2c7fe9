"""One-shot colour frames: demosaicing a calibrated Bayer mosaic, and the luminance of a colour
cube.

A one-shot colour camera records one colour per pixel through a 2x2 colour filter array (the
Bayer pattern, ``frames.bayer_pattern``, read by the dialects). Calibration (bias, dark, flat)
is done in mosaic space, pixel by pixel as for a monochrome sensor; the calibrated mosaic is
then interpolated to three full planes by ``colour-demosaicing`` (Colour Developers, the
demosaicing package of colour-science): ``bilinear`` (the default, a plain bilinear
interpolation of each colour) or ``malvar2004`` (Malvar, He & Cutler 2004, gradient-corrected
bilinear interpolation). Star detection and registration work on the luminance (the mean of
the three planes); each plane is warped by the same transform and stacked by the one combine
engine (:mod:`archive.calib.combine`, a plane at a time).

Colour images are arrays of shape (3, ny, nx), planes red, green, blue: numpy's order of a
FITS cube with NAXIS3 = 3, NAXIS2 = ny, NAXIS1 = nx (as Siril and PixInsight write them).
"""

from __future__ import annotations

import numpy as np

#: Demosaicing methods: name -> the colour-demosaicing function.
DEMOSAIC_METHODS = {
    "bilinear": "demosaicing_CFA_Bayer_bilinear",
    "malvar2004": "demosaicing_CFA_Bayer_Malvar2004",
}
#: The planes of a colour image, in order.
PLANES = ("red", "green", "blue")


def check_demosaic_method(method: str) -> str:
    """``method`` if it is one of :data:`DEMOSAIC_METHODS`.

    Raises
    ------
    ValueError
        An unknown method (``[calibrate] demosaic`` of configs/reduction.toml).
    """
    if method not in DEMOSAIC_METHODS:
        raise ValueError(f"unknown demosaicing method {method!r}; use one of {sorted(DEMOSAIC_METHODS)}")
    return method


def demosaic(mosaic: np.ndarray, pattern: str, method: str = "bilinear") -> np.ndarray:
    """Interpolate a Bayer mosaic into three colour planes.

    Parameters
    ----------
    mosaic : ndarray, shape (ny, nx)
        A calibrated mosaic, ADU; ``mosaic[0, 0]`` is the first pixel of ``pattern``.
    pattern : {'RGGB', 'BGGR', 'GRBG', 'GBRG'}
        The 2x2 cell at ``mosaic[0, 0]``, row by row (``frames.bayer_pattern``).
    method : {'bilinear', 'malvar2004'}
        See the module docstring.

    Returns
    -------
    ndarray, shape (3, ny, nx), float32
        Red, green and blue, ADU. Non-finite input pixels are interpolated over as 0.

    Raises
    ------
    ValueError
        Not a 2-D image, an unknown pattern or method.
    """
    data = np.asarray(mosaic, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"a Bayer mosaic is a 2-D image, not of shape {data.shape}")
    if pattern not in ("RGGB", "BGGR", "GRBG", "GBRG"):
        raise ValueError(f"unknown Bayer pattern {pattern!r}")
    if check_demosaic_method(method) == "bilinear":
        return _bilinear(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), pattern)
    import colour_demosaicing  # colour-science: about a second to import, for the other methods only

    function = getattr(colour_demosaicing, DEMOSAIC_METHODS[method])
    rgb = function(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), pattern)  # (ny, nx, 3)
    return np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32)


def _bilinear(data: np.ndarray, pattern: str) -> np.ndarray:
    """colour-demosaicing's bilinear demosaicing (the masked mosaic convolved with its kernels,
    ``scipy.ndimage.convolve``, reflected edges) in float32, written straight into the
    (3, ny, nx) cube: the library's float64 planes and (ny, nx, 3) stack cost twice the time
    and four times the memory (``tests/test_colour.py`` checks both agree)."""
    from scipy.ndimage import convolve

    kernel_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4
    kernel_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4
    out = np.empty((3, *data.shape), dtype=np.float32)
    for plane, channel in enumerate("RGB"):
        masked = np.zeros_like(data)
        for (dy, dx), letter in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
            if letter == channel:
                masked[dy::2, dx::2] = data[dy::2, dx::2]
        convolve(masked, kernel_g if channel == "G" else kernel_rb, output=out[plane])
    return out


def luminance(data: np.ndarray) -> np.ndarray:
    """The image stars are found and measured on: a 2-D image itself, a colour cube's mean of
    its planes.

    Parameters
    ----------
    data : ndarray, shape (ny, nx) or (3, ny, nx)

    Returns
    -------
    ndarray, shape (ny, nx)
        NaN where any plane is NaN (outside a registered frame's footprint).

    Raises
    ------
    ValueError
        Neither a 2-D image nor a cube of planes.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        return data
    if data.ndim == 3:
        return data.mean(axis=0, dtype=np.float32)
    raise ValueError(f"not an image or a colour cube: shape {data.shape}")
