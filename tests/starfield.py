"""Synthetic star fields (not real data: every test using them says so) with known Gaussian
FWHM, ellipticity, background and noise, written as 16-bit FITS files like a camera's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits


def star_field(shape=(512, 512), *, n_stars=60, fwhm=3.0, ellipticity=0.0, angle_deg=30.0, background=1000.0,
               noise=10.0, flux_range=(2e4, 2e5), transparency=1.0, seed=1) -> np.ndarray:
    """An image of elliptical Gaussian stars on a flat background with Gaussian noise (ADU).

    ``fwhm`` is the geometric mean of the major and minor FWHM (px); ``ellipticity`` is
    1 - b/a; ``transparency`` scales every star's flux (clouds). Stars stay 20 px from the edges.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    image = np.full(shape, background, dtype=np.float64)
    q = 1.0 - ellipticity
    sigma = fwhm / 2.3548
    sa, sb = sigma / np.sqrt(q), sigma * np.sqrt(q)
    t = np.radians(angle_deg)
    placement = np.random.default_rng(12345)  # the same star positions in every frame of a series
    xs = placement.uniform(20, nx - 20, n_stars)
    ys = placement.uniform(20, ny - 20, n_stars)
    fluxes = placement.uniform(*flux_range, n_stars) * transparency
    yy, xx = np.mgrid[0:ny, 0:nx]
    for x0, y0, f in zip(xs, ys, fluxes):
        x1, x2 = int(max(0, x0 - 8 * sa)), int(min(nx, x0 + 8 * sa + 1))
        y1, y2 = int(max(0, y0 - 8 * sa)), int(min(ny, y0 + 8 * sa + 1))
        dx, dy = xx[y1:y2, x1:x2] - x0, yy[y1:y2, x1:x2] - y0
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        image[y1:y2, x1:x2] += f / (2 * np.pi * sa * sb) * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
    image += rng.normal(0.0, noise, shape)
    return image


def write_light(path: Path, image: np.ndarray, **header) -> Path:
    """Write ``image`` as unsigned 16-bit (BZERO 32768) with the given header cards."""
    hdu = fits.PrimaryHDU(np.clip(np.round(image), 0, 65535).astype(np.uint16))
    for key, value in header.items():
        hdu.header[key.replace("_", "-") if key in ("DATE_OBS", "CCD_TEMP", "SET_TEMP") else key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return path
