"""Overscan and trim: the detector geometry of a frame, and the pixel operations on it.

The sections come from the header (``configs/detector.toml`` names the keywords: BIASSEC
for the overscan strip, TRIMSEC else DATASEC for the light-sensitive area) or from the
per-instrument overrides of that file. The arithmetic is ccdproc's:
``ccdproc.subtract_overscan(median=True)`` (the median across the strip, one value per row
for a strip of columns, per column for a strip of rows) and ``ccdproc.trim_image``. For a
master combined in blocks of rows, :func:`subtract_overscan_rows` gives the same per-row
values from the block itself (a strip of columns) or from levels measured once per frame
(:func:`overscan_levels`, a strip of rows).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archive import keywords as kw
from archive.config import for_instrument, read_toml
from archive.resources import resource_dir

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


@dataclass(frozen=True)
class Geometry:
    """Where a frame's overscan strip and light-sensitive area are.

    Attributes
    ----------
    overscan : str or None
        The overscan section (FITS notation), None when there is none or it is unusable.
    trim : str or None
        The section kept in calibrated lights, None to keep the whole image.
    notes : tuple of str
        Why a section found in the header or configuration was not used.
    """

    overscan: str | None = None
    trim: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def parameters(self) -> dict[str, Any]:
        """The geometry as reduction parameters (empty when nothing applies)."""
        out: dict[str, Any] = {}
        if self.overscan:
            out["overscan"] = self.overscan
        if self.trim:
            out["trim"] = self.trim
        return out


def parse_section(text: str) -> tuple[slice, slice]:
    """A FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive) as numpy slices ``(rows, columns)``.

    Raises
    ------
    ValueError
        Not a section, or reversed (x2 < x1 or y2 < y1; flipped readouts are not supported).
    """
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a section [x1:x2,y1:y2]")
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    if x1 < 1 or y1 < 1 or x2 < x1 or y2 < y1:
        raise ValueError(f"{text!r} is not a forward section of 1-based pixels")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


@functools.cache
def _config(path: str | None) -> dict[str, Any]:
    return read_toml(Path(path) if path else resource_dir("configs") / "detector.toml")


def detector_geometry(header: Any, shape: tuple[int, int], instrument: str | None = None, *,
                      config: str | None = None) -> Geometry:
    """The overscan and trim sections of a frame of ``shape`` (ny, nx), checked against it.

    Parameters
    ----------
    header : mapping
        The frame's header (``astropy.io.fits.Header`` or a dict of keyword -> value).
    shape : tuple of int
        (NAXIS2, NAXIS1) of the image.
    instrument : str, optional
        Normalized instrument name, for the overrides of ``configs/detector.toml``.
    config : str, optional
        Another detector file (tests).

    Returns
    -------
    Geometry
        A section that is not one, lies outside the image, or a trim section that is the whole
        image, is dropped with a note; an overscan strip inside the trim section is dropped
        too (it would be light-sensitive pixels).
    """
    cfg = _config(config)
    keys, absent = cfg["keywords"], {a.upper() for a in cfg["keywords"].get("absent", [])}
    override = for_instrument(cfg.get("instruments", {}), instrument, {})
    notes: list[str] = []

    def find(kind: str) -> tuple[str | None, str]:
        if kind in override:
            return (override[kind] or None), f"configs/detector.toml [{instrument}] {kind}"
        for key in keys[kind]:
            value = header.get(key) if hasattr(header, "get") else None
            if value is not None and str(value).strip().upper() not in absent:
                return str(value).strip(), key
        return None, ""

    def usable(kind: str) -> tuple[slice, slice] | None:
        text, origin = find(kind)
        if text is None:
            return None
        try:
            rows, cols = parse_section(text)
        except ValueError as exc:
            notes.append(f"{kind} {origin}: {exc}")
            return None
        if rows.stop > shape[0] or cols.stop > shape[1]:
            notes.append(f"{kind} {origin} = {text} lies outside the {shape[1]}x{shape[0]} image: not used")
            return None
        return rows, cols

    overscan, trim = usable("overscan"), usable("trim")
    if overscan is not None:
        axis = strip_axis(_text(overscan))
        full = (overscan[0].stop - overscan[0].start == shape[0]) if axis == 1 else (
            overscan[1].stop - overscan[1].start == shape[1])
        if not full:
            notes.append(f"overscan {_text(overscan)} does not span the image's "
                         f"{'rows' if axis == 1 else 'columns'}: not used")
            overscan = None
    if trim is not None and (trim[0].stop - trim[0].start, trim[1].stop - trim[1].start) == tuple(shape):
        trim = None  # the whole image: nothing to cut
    if overscan is not None and trim is not None and _overlap(overscan, trim):
        notes.append(f"overscan {_text(overscan)} lies inside the trim section {_text(trim)}: not used")
        overscan = None
    return Geometry(_text(overscan) if overscan else None, _text(trim) if trim else None, tuple(notes))


def _overlap(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


def _text(section: tuple[slice, slice]) -> str:
    rows, cols = section
    return f"[{cols.start + 1}:{cols.stop},{rows.start + 1}:{rows.stop}]"


def strip_axis(section: str) -> int:
    """ccdproc's default ``overscan_axis``: the shorter dimension of the strip (1 for a strip
    of columns: one value per row; 0 for a strip of rows; 1 when square)."""
    rows, cols = parse_section(section)
    return 0 if (rows.stop - rows.start) < (cols.stop - cols.start) else 1


def subtract_overscan(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``data`` (ny, nx, ADU) minus its overscan level, with ``ccdproc.subtract_overscan``
    (median across the strip, no model fit); unchanged without an overscan section."""
    if not geometry.overscan:
        return data
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    ccd = CCDData(np.asarray(data, dtype=np.float64), unit=u.adu)
    out = ccdproc.subtract_overscan(ccd, fits_section=geometry.overscan, median=True,
                                    overscan_axis=strip_axis(geometry.overscan))
    return np.asarray(out.data, dtype=np.float64)


def trim(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``data`` cut to the trim section with ``ccdproc.trim_image`` (unchanged without one)."""
    if not geometry.trim:
        return data
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    out = ccdproc.trim_image(CCDData(np.asarray(data), unit=u.adu), fits_section=geometry.trim)
    return np.asarray(out.data)


def trim_slices(geometry: Geometry, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The numpy slices of the trim section (the whole image without one)."""
    return parse_section(geometry.trim) if geometry.trim else (slice(0, shape[0]), slice(0, shape[1]))


def overscan_levels(strip_rows: np.ndarray) -> np.ndarray:
    """Per-column overscan levels of a strip of rows (shape (rows of the strip, nx)): the median
    down each column, as ``ccdproc.subtract_overscan(median=True, overscan_axis=0)``."""
    return np.median(np.asarray(strip_rows, dtype=np.float64), axis=0)


def subtract_overscan_rows(block: np.ndarray, geometry: Geometry,
                           column_levels: np.ndarray | None = None) -> np.ndarray:
    """Subtract the overscan level from ``block``, whole rows of a frame.

    A strip of columns gives one level per row, the median of the block's own strip pixels; a
    strip of rows gives one level per column, measured once per frame
    (:func:`overscan_levels`) and passed as ``column_levels``. In place; returns ``block``.
    """
    if not geometry.overscan:
        return block
    if strip_axis(geometry.overscan) == 1:  # a strip of columns spanning every row (detector_geometry)
        cols = parse_section(geometry.overscan)[1]
        block -= np.median(block[:, cols], axis=1, keepdims=True).astype(block.dtype)
        return block
    if column_levels is None:
        raise ValueError("a strip of rows needs its per-column levels (overscan_levels)")
    block -= column_levels[None, :].astype(block.dtype)
    return block


def shift_for_trim(header: Any, section: str) -> None:
    """Make ``header`` (an ``astropy.io.fits.Header`` copied from the raw frame) describe the
    trimmed image: the WCS reference pixel moves by the cut (CRPIX1/2), IRAF's physical-pixel
    offset is recorded (LTV1/2, as IRAF's ccdproc writes it), and the raw frame's own
    sections, which no longer apply, are removed."""
    rows, cols = parse_section(section)
    for axis, cut in (("1", cols.start), ("2", rows.start)):
        if f"CRPIX{axis}" in header:
            header[f"CRPIX{axis}"] = float(header[f"CRPIX{axis}"]) - cut
        header[f"LTV{axis}"] = (float(header.get(f"LTV{axis}", 0.0)) - cut, "physical = image + LTV offset")
    for key in kw.RAW_SECTIONS:
        header.remove(key, ignore_missing=True, remove_all=True)
