"""Calibrating a light: bias, dark (exact, scaled or interpolated), flat, cosmic rays.

The arithmetic is ccdproc's (``subtract_bias``, ``subtract_dark``, ``flat_correct``,
``cosmicray_lacosmic``): for a light :math:`L` of exposure :math:`t`, a master bias
:math:`B`, bias-subtracted master darks :math:`D_k` with weights :math:`w_k` and a master flat
:math:`F`,

.. math:: C = \\frac{L - B - \\sum_k w_k D_k}{F / \\operatorname{median}(F)}

An exact dark has one weight 1; a scaled dark one weight :math:`t / t_D` (ccdproc's
``scale=True``); an interpolated dark the weights of the least-squares line
:math:`D = A t + B` through darks of several exposures evaluated at :math:`t` (astro_reduce's
method): :math:`w_k = 1/n + (t - \\bar t)(t_k - \\bar t) / \\sum_j (t_j - \\bar t)^2`
(:func:`archive.calib.select.interpolation_weights`, where the selection computes them); a
dark ladder's model (method ``model``, :mod:`archive.calib.ladder`) is evaluated at the
light's exposure: :math:`\\sum_k w_k D_k` becomes :math:`I + S t`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.nddata import CCDData

from archive import keywords as kw
from archive.calib.overscan import Geometry, shift_for_trim, subtract_overscan, trim, trim_slices
from archive.fitsio import product_header, read_dark_model, read_pixels, set_card, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationJob:
    """What a worker needs to calibrate one light (paths and numbers only: picklable).

    Attributes
    ----------
    light : str
        The raw light.
    light_hdu : int or None
        Index of the light's image HDU (``Frame.hdu_index``: 1 for ``.fz``, the image extension
        of a multi-extension file); None: the first HDU with an image.
    output : str
        The calibrated file to write.
    bias : str or None
        Master bias.
    darks : sequence of (str, float)
        Bias-subtracted master darks and their weights (see the module docstring); for
        'model', one dark model and the light's exposure time (s) to evaluate it at.
    dark_method : str
        'exact', 'scaled', 'interpolated', 'model' or 'none', as the selection decided.
    flat : str or None
        Master flat.
    bad_pixels : str or None
        Bad-pixel mask (:mod:`archive.calib.badpix`): its non-zero pixels become NaN.
    cosmic_rays : bool
        Clean cosmic rays with ``ccdproc.cosmicray_lacosmic`` (astroscrappy).
    cr_sigclip : float
        L.A.Cosmic detection limit (sigma).
    flat_min_value : float
        Normalized flat values below this are replaced by it.
    header : dict
        Extra cards for the output (provenance: step, fingerprint, software).
    overscan, trim : str or None
        The detector's overscan and trim sections (:func:`archive.calib.overscan.detector_geometry`).
    bayer_pattern : str or None
        The raw light's Bayer pattern (``frames.bayer_pattern``): the calibrated mosaic is
        demosaiced into a colour cube (:func:`archive.reduce.colour.demosaic`). None: mono.
    demosaic : str
        The demosaicing method (``[calibrate] demosaic``).
    """

    light: str
    output: str
    light_hdu: int | None = None
    bias: str | None = None
    darks: tuple[tuple[str, float], ...] = ()
    dark_method: str = "none"
    flat: str | None = None
    bad_pixels: str | None = None
    cosmic_rays: bool = False
    cr_sigclip: float = 4.5
    flat_min_value: float = 0.01
    header: dict = field(default_factory=dict)
    overscan: str | None = None
    trim: str | None = None
    bayer_pattern: str | None = None
    demosaic: str = "bilinear"


def calibrate_array(
    light: np.ndarray,
    bias: np.ndarray | None = None,
    darks: Sequence[tuple[np.ndarray, float]] = (),
    flat: np.ndarray | None = None,
    *,
    cosmic_rays: bool = False,
    cr_sigclip: float = 4.5,
    flat_min_value: float | None = 0.01,
    geometry: Geometry | None = None,
    bad_pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], float | None]:
    """Calibrate one light image with ccdproc.

    The overscan level is subtracted first and the image trimmed last (``geometry``); the
    masters keep the detector's geometry (see ``configs/detector.toml``), and the flat is
    normalized by its median over the trim section.

    Parameters
    ----------
    light : ndarray, shape (ny, nx)
        Raw light, ADU.
    bias : ndarray, shape (ny, nx), optional
        Master bias, ADU.
    darks : sequence of (ndarray (ny, nx), float)
        Bias-subtracted master darks (ADU) and their weights.
    flat : ndarray, shape (ny, nx), optional
        Master flat (any scale; normalized here by its median).
    cosmic_rays, cr_sigclip, flat_min_value
        See :class:`CalibrationJob`.
    geometry : Geometry, optional
        Overscan and trim sections (default none).
    bad_pixels : ndarray, shape (ny, nx), optional
        Bad-pixel mask in the raw geometry: its non-zero pixels become NaN (after cosmic-ray
        cleaning, before trimming), so they never count in star detection or a combine.

    Returns
    -------
    data : ndarray, shape (ny, nx) or the trim section's, float64
        Calibrated image, ADU.
    steps : list of str
        The steps applied, in order.
    flat_norm : float or None
        The median the flat was divided by.

    Raises
    ------
    ValueError
        A calibration image's shape differs from the light's, or the flat's median is not positive.
    """
    geometry = geometry or Geometry()
    steps = []
    light = np.asarray(light, dtype=np.float64)
    if geometry.overscan:
        light = subtract_overscan(light, geometry)
        steps.append("overscan")
    ccd = CCDData(light, unit=u.adu)
    for name, image in [("bias", bias), ("flat", flat)] + [("dark", d) for d, _ in darks]:
        if image is not None and np.shape(image) != ccd.shape:
            raise ValueError(f"master {name} has shape {np.shape(image)}, the light {ccd.shape}")
    if bias is not None:
        import ccdproc

        ccd = ccdproc.subtract_bias(ccd, CCDData(np.asarray(bias, dtype=np.float64), unit=u.adu))
        steps.append("bias")
    if darks:
        import ccdproc

        if len(darks) == 1:  # exact (weight 1) or scaled (t / t_dark): ccdproc's scale=True
            dark, weight = darks[0]
            ccd = ccdproc.subtract_dark(
                ccd, CCDData(np.asarray(dark, dtype=np.float64), unit=u.adu),
                dark_exposure=1.0 * u.s, data_exposure=float(weight) * u.s, scale=True,
            )
        else:
            combined = sum(float(w) * np.asarray(d, dtype=np.float64) for d, w in darks)
            ccd = ccdproc.subtract_dark(
                ccd, CCDData(combined, unit=u.adu), dark_exposure=1.0 * u.s, data_exposure=1.0 * u.s, scale=False,
            )
        steps.append("dark")
    flat_norm = None
    if flat is not None:
        import ccdproc

        rows, cols = trim_slices(geometry, np.shape(flat))
        flat_norm = float(np.median(np.asarray(flat)[rows, cols]))
        if not flat_norm > 0:
            raise ValueError(f"the master flat's median is {flat_norm}, not positive")
        min_value = None if flat_min_value is None else flat_min_value * flat_norm
        ccd = ccdproc.flat_correct(
            ccd, CCDData(np.asarray(flat, dtype=np.float64), unit=u.adu), min_value=min_value,
            norm_value=flat_norm,
        )
        steps.append("flat")
    if cosmic_rays:
        import ccdproc

        ccd = ccdproc.cosmicray_lacosmic(ccd, sigclip=cr_sigclip)
        ccd = CCDData(np.asarray(ccd.data, dtype=np.float64), unit=u.adu)
        steps.append("cosmic_rays")
    data = np.asarray(ccd.data, dtype=np.float64)
    if bad_pixels is not None:
        if np.shape(bad_pixels) != data.shape:
            raise ValueError(f"bad-pixel mask has shape {np.shape(bad_pixels)}, the light {data.shape}")
        data = data.copy()
        data[np.asarray(bad_pixels) != 0] = np.nan
        steps.append("bad_pixels")
    if geometry.trim:
        data = trim(data, geometry)
        steps.append("trim")
    return data, steps, flat_norm


def fill_channels(mosaic: np.ndarray) -> np.ndarray:
    """A Bayer mosaic with each non-finite pixel replaced by the mean of the finite pixels of its
    colour channel around it (the 3 x 3 neighbours of its channel, 2 pixels apart on the
    sensor; 0 when none is finite), so that demosaicing interpolates its neighbours from their
    own colour rather than from a hole.

    Parameters
    ----------
    mosaic : ndarray, shape (ny, nx)

    Returns
    -------
    ndarray, shape (ny, nx)
        A copy when a pixel was filled, else ``mosaic`` itself.
    """
    bad = ~np.isfinite(mosaic)
    if not bad.any():
        return mosaic
    from scipy.ndimage import uniform_filter

    out = np.array(mosaic, dtype=np.float64)
    for r in (0, 1):
        for c in (0, 1):
            part, holes = out[r::2, c::2], bad[r::2, c::2]
            if not holes.any():
                continue
            good = (~holes).astype(np.float64)
            total = uniform_filter(np.where(holes, 0.0, part), size=3, mode="constant")
            count = uniform_filter(good, size=3, mode="constant")
            part[holes] = np.where(count[holes] > 0, total[holes] / np.maximum(count[holes], 1e-12), 0.0)
    return out


def calibrate_light_file(job: CalibrationJob) -> dict:
    """Calibrate ``job.light`` and write ``job.output`` (float32, temporary name then rename).

    The header is the light's, with IMAGETYP 'CALIBRATED', the masters' file names, the dark
    method and scale, the flat normalization and the steps applied ('uncalibrated' when the
    instrument requires none and none was found; keywords in :mod:`archive.keywords`), plus
    ``job.header``. A Bayer mosaic (``job.bayer_pattern``) is calibrated in mosaic space, then
    demosaiced: the output is a cube of shape (3, ny, nx) (NAXIS3 = 3: red, green, blue),
    its header records the method and the mosaic's pattern (shifted by an odd trim start) and
    loses the raw mosaic keywords, so that it is catalogued as no mosaic.

    Returns
    -------
    dict
        ``output`` (path), ``steps`` (list), ``flat_norm`` (float or None).

    Raises
    ------
    OSError
        A file cannot be read or written.
    ValueError
        Shapes differ, or the flat is unusable.
    """
    light, header = read_pixels(job.light, job.light_hdu)
    bias = read_pixels(job.bias)[0] if job.bias else None
    if job.dark_method == "model":  # a dark ladder's model: intercept + slope * t, t the weight
        darks = []
        for path, t in job.darks:
            slope, intercept = read_dark_model(path)
            darks.append((intercept + float(t) * slope, 1.0))
    else:
        darks = [(read_pixels(path)[0], weight) for path, weight in job.darks]
    flat = read_pixels(job.flat)[0] if job.flat else None
    mask = read_pixels(job.bad_pixels, dtype=np.uint8)[0] if job.bad_pixels else None
    geometry = Geometry(job.overscan, job.trim)
    data, steps, flat_norm = calibrate_array(
        light, bias, darks, flat, cosmic_rays=job.cosmic_rays, cr_sigclip=job.cr_sigclip,
        flat_min_value=job.flat_min_value, geometry=geometry, bad_pixels=mask,
    )
    out = product_header(header)
    if job.overscan:
        out[kw.OVERSCAN] = (job.overscan, "overscan section subtracted (median per line)")
    if job.trim:
        out[kw.TRIM] = (job.trim, "trimmed to this section of the raw image")
        shift_for_trim(out, job.trim)
    out[kw.IMAGE_TYPE] = kw.IMAGE_TYPE_VALUES["calibrated"]
    if job.bias:
        set_card(out, kw.MASTER_BIAS, Path(job.bias).name, "master bias")
    if job.darks:
        set_card(out, kw.MASTER_DARK, ",".join(Path(p).name for p, _ in job.darks), "master dark(s)")
        out[kw.DARK_METHOD] = (job.dark_method, "exact, scaled, interpolated or model dark")
        if len(job.darks) == 1 and job.dark_method != "model":
            out[kw.DARK_SCALE] = (float(job.darks[0][1]), "dark scale t_light / t_dark")
    if job.flat:
        set_card(out, kw.MASTER_FLAT, Path(job.flat).name, "master flat")
        out[kw.FLAT_NORM] = (flat_norm, "flat divided by this median")
    if job.bad_pixels:
        set_card(out, kw.BAD_PIXELS, Path(job.bad_pixels).name, "bad-pixel mask (pixels set to NaN)")
        out[kw.BAD_PIXEL_COUNT] = (int(np.count_nonzero(mask)), "pixels masked")
    out[kw.COSMIC_RAYS] = (bool(job.cosmic_rays), "cosmic rays cleaned")
    if job.bayer_pattern:
        from archive.ingest.dialects import shift_pattern
        from archive.reduce.colour import demosaic

        rows, cols = trim_slices(geometry, light.shape)
        pattern = shift_pattern(job.bayer_pattern, cols.start or 0, rows.start or 0)
        masked = ~np.isfinite(data)
        data = demosaic(fill_channels(data), pattern, job.demosaic)
        data[:, masked] = np.nan  # masked pixels stay out of every plane
        for key in kw.MOSAIC:
            out.remove(key, ignore_missing=True, remove_all=True)
        out[kw.DEMOSAIC] = (job.demosaic, "demosaicing method after calibration")
        out[kw.MOSAIC_PATTERN] = (pattern, "Bayer pattern demosaiced; planes R, G, B")
    out[kw.STEPS] = (",".join(steps) or "uncalibrated", "calibration steps in order")
    for key, value in job.header.items():
        out[key] = value
    write_atomic(job.output, data, out)
    log.debug("calibrated %s -> %s (%s)", job.light, job.output, ",".join(steps))
    return {"output": job.output, "steps": steps, "flat_norm": flat_norm}
