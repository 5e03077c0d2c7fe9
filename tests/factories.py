"""Small synthetic FITS files for tests (real files, written by astropy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits


def write_fits(
    path: Path,
    header: dict[str, Any] | None = None,
    *,
    data: np.ndarray | None = None,
    shape: tuple[int, ...] = (16, 16),
    value: float = 1000.0,
    seed: int | None = None,
) -> Path:
    """Write a single-HDU FITS file with the given header cards and return its path.

    ``data`` defaults to a uint16 image of ``shape`` filled with ``value`` (plus Poisson-like
    noise when ``seed`` is given, so that two files differ in bytes).
    """
    if data is None:
        data = np.full(shape, value, dtype=np.float64)
        if seed is not None:
            data = data + np.random.default_rng(seed).normal(0, 5, shape)
        data = np.clip(data, 0, 65535).astype(np.uint16)
    hdu = fits.PrimaryHDU(data)
    for key, val in (header or {}).items():
        hdu.header[key] = val
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return path


def nina_header(image_type: str = "LIGHT", **overrides: Any) -> dict[str, Any]:
    """A N.I.N.A.-style header of a CMOS camera (about what N.I.N.A. 3 writes)."""
    header = {
        "IMAGETYP": image_type,
        "EXPOSURE": 120.0,
        "EXPTIME": 120.0,
        "DATE-LOC": "2026-11-20T23:01:02.123",
        "DATE-OBS": "2026-11-20T22:01:02.123",
        "XBINNING": 1,
        "YBINNING": 1,
        "GAIN": 100,
        "OFFSET": 50,
        "EGAIN": 0.25,
        "XPIXSZ": 3.76,
        "YPIXSZ": 3.76,
        "INSTRUME": "ZWO ASI2600MM Pro",
        "SET-TEMP": -10.0,
        "CCD-TEMP": -10.1,
        "READOUTM": "Normal",
        "TELESCOP": "Esprit 100ED",
        "FOCALLEN": 550.0,
        "FILTER": "Ha",
        "OBJECT": "M 31",
        "RA": 10.684708,
        "DEC": 41.26875,
        "OBJCTRA": "00 42 44.330",
        "OBJCTDEC": "+41 16 07.50",
        "SITELAT": 47.37,
        "SITELONG": 8.54,
        "SWCREATE": "N.I.N.A. 3.1.2.9001",
    }
    header.update(overrides)
    return header
