"""Measuring a frame's quality from its pixels (a worker task of the executor).

Libraries: stars are SEP's detection (:mod:`archive.reduce.stars`); sigma-clipped statistics
are ``astropy.stats.sigma_clipped_stats``. Nothing here touches the
catalogue: :func:`measure_file` takes a :class:`MeasureJob` of paths and plain values and
returns a dict of the columns of :class:`archive.db.models.FrameMeasurement`.

What is measured, per kind of frame
-----------------------------------
Every frame
    ``background_adu`` and ``noise_adu``: the sigma-clipped (3 sigma, 5 iterations) median and
    standard deviation of the pixels; ``background_e`` and ``noise_e`` times the gain (e-/ADU)
    when it is known.
Lights
    Stars are detected and measured by :func:`archive.reduce.stars.detect` (SEP's detection on
    the frame binned ``detect_binning`` x ``detect_binning``, centres and shapes from
    adaptive moments on the full-resolution pixels; see there), without SEP flags and
    peaking below the saturation level; detections sharper than ``min_fwhm_px`` (hot
    pixels, cosmic rays) are not stars. ``n_stars`` counts the stars.

    ``fwhm_px``: the median FWHM of circular Moffat fits to the ``fit_stars`` brightest
    isolated stars (:func:`archive.reduce.stars.moffat_fwhm`); when no fit converges, the
    median over the isolated stars of 2.3548 (det C)^(1/4), C a star's covariance from its
    moments (exact for a Gaussian star).
    ``fwhm_arcsec`` multiplies by the plate scale (arcsec/px) from the celestial WCS
    (``astropy.wcs.utils.proj_plane_pixel_scales``; the catalogue's, computed so at ingest from
    the frame's header, when the job carries it) or else 206.265 x pixel size (um) / focal
    length (mm).

    ``eccentricity``: the median over the isolated stars of sqrt(1 - b^2/a^2), a^2 and b^2 the
    eigenvalues of C (PixInsight's SubframeSelector convention; 0 is round).

    ``saturated_fraction``: the fraction of the raw frame's pixels at or above
    ``saturation_fraction`` of its saturation level (a header keyword, else the largest value of
    the raw data type); NULL when neither is known.

    ``weight`` (the signal weight): (F / (sigma * FWHM))^2 with F the summed flux (ADU) of all
    the stars (each in an aperture of radius 2 FWHM, :func:`archive.reduce.stars.aperture_flux`),
    sigma the background noise (ADU) and FWHM in pixels. Per star, F_i / (sigma * FWHM) is its
    signal-to-noise ratio when the sky dominates the noise (the noise in an aperture of radius
    proportional to the FWHM is sigma times the square root of its area; Howell, *Handbook of
    CCD Astronomy*, the CCD equation); summing the fluxes over the stars follows PixInsight's
    PSF signal weight (the sum of the stars' PSF fluxes over the noise), so clouds lower it
    twice (dimmer stars, fewer of them above the threshold), a bright sky through sigma, seeing
    through the FWHM. It needs no reference frame; it compares frames of one target, filter
    and instrument.

    ``stars``: [x, y, flux, fwhm_px, a, b] of up to ``max_stars`` stars, brightest first
    (pixel coordinates 0-based as SEP's), kept so registration does not detect them again.
Bias
    ``read_noise_adu``: the sigma-clipped standard deviation (of one raw bias it is the read
    noise plus any fixed pattern; of a master it is the master's own noise).
Darks
    ``dark_current_adu_s``: the sigma-clipped median minus the bias level, per second of
    exposure. The bias level is the master bias given (``bias_path``), else 0 for a master dark
    built with the bias subtracted; NULL when neither. ``hot_pixels``: pixels above median +
    ``hot_sigma`` x sigma.
Flats
    ``flat_snr``: median / sigma of the central box; ``flat_falloff``: the median of the four
    corner boxes over the median of the central box (1 is flat; vignetting makes it smaller).
Masters
    The same as their kind, plus ``changed_fraction``: the fraction of pixels whose difference
    from the previous master (same kind and instrument; flats normalized by their medians)
    lies more than ``compare_sigma`` robust standard deviations (1.4826 x MAD of the
    difference) away from zero, as LCO's BANZAI compares a new master with the last good one.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archive.fitsio import read_pixels
from archive.reduce.colour import luminance
from archive.reduce.stars import detect

log = logging.getLogger(__name__)

#: Bumped when the measurement code changes; with ``[measure] version`` of the quality rules
#: it makes the measurement version (:func:`measurement_version`).
# 2: statistics on 65,536 pixels (was 250,000); WCS from its cards only
# 3: Moffat fits with the analytic Jacobian to a tolerance of 1e-5 (were finite differences to
#    1.5e-8); SEP's default pixel stack
# 4: stars detected on the binned frame ([measure] detect_binning), centres from the moments
CODE_VERSION = "4"
#: The modules :func:`measure_file` imports on its first call: a pool's workers import them as
#: they start (:func:`archive.reduce.executor.make_executor` ``preload``).
#: astropy.wcs is not among them: a frame's plate scale usually comes from the catalogue
#: (:attr:`MeasureJob.plate_scale_arcsec`), and its import (0.12 s, with astropy.coordinates)
#: is paid only by a worker that reads a WCS itself.
WORKER_MODULES = ("sep", "scipy.optimize", "scipy.spatial", "archive.reduce.align", "archive.reduce.stars",
                  "archive.reduce.measure")


def measurement_version(config_version: str) -> str:
    """The version a measurement is recorded under: the code's and the configuration's."""
    return f"{CODE_VERSION}.{config_version}"


@dataclass(frozen=True)
class MeasureJob:
    """One frame to measure (picklable).

    Attributes
    ----------
    frame_id : int
    path : str
        The file whose pixels are measured (a light's calibrated frame, else the frame).
    kind : str
        The frame's image type (light, bias, dark, flat, master_bias, ...).
    raw_path : str, optional
        A light's raw file, for the saturated fraction (default ``path``).
    exposure_s : float, optional
    gain_e_per_adu : float, optional
        Configured gain; a header keyword of ``gain_keywords`` wins.
    bias_path : str, optional
        Darks: the master bias whose level is subtracted.
    bias_subtracted : bool
        Master darks built with the bias subtracted.
    previous_path : str, optional
        Masters: the previous master of the same kind and instrument.
    plate_scale_arcsec : float, optional
        The plate scale ingest computed from the frame's own header WCS (its ``header``
        footprint): the figure :func:`plate_scale` would compute again from the same cards.
        None: measured from the file's header.
    parameters : dict
        ``[measure]`` of the quality rules.
    """

    frame_id: int
    path: str
    kind: str
    raw_path: str | None = None
    exposure_s: float | None = None
    gain_e_per_adu: float | None = None
    bias_path: str | None = None
    bias_subtracted: bool = False
    previous_path: str | None = None
    plate_scale_arcsec: float | None = None
    parameters: dict = field(default_factory=dict)


def clipped_stats(data: np.ndarray, sample: int = 65_536) -> tuple[float, float]:
    """Sigma-clipped median and standard deviation (3 sigma, 5 iterations) of the finite
    pixels; on a regular sub-sample of at most ``sample`` pixels for speed (the median's
    standard error on 65,536 pixels is 0.5 % of the standard deviation: 1.2533 sigma /
    sqrt(n)).

    The clipping of ``astropy.stats.sigma_clipped_stats`` (``sigma=3, maxiters=5``; median
    centre, population standard deviation, bounds inclusive, stopping when nothing more is
    clipped), written out for the one case used here: astropy's version masks NaN values and
    takes a median (a partition) again on every iteration. Here the sample is sorted once and
    each iteration keeps a contiguous slice of it (the bounds found by ``searchsorted``): a
    frame's statistics take about 1.5 ms instead of 5-10 ms, 0.5 ms when the sample is 16-bit
    whole numbers (a raw frame), which numpy sorts by radix (``tests/test_quality.py`` checks
    that both give the same figures).
    """
    flat = data.ravel()
    step = max(1, flat.size // sample)
    values = flat[::step]
    values = values[np.isfinite(values)]
    if values.size and 0 <= values.min() and values.max() <= 65535 \
            and np.array_equal(whole := values.astype(np.uint16), values):
        # a raw frame's sample is 16-bit whole numbers: numpy sorts those by radix, 3 times as fast
        values = np.sort(whole, kind="stable").astype(values.dtype)
    else:
        values = np.sort(values)
    if values.size == 0:
        return float("nan"), float("nan")

    def median_std(part: np.ndarray) -> tuple[float, float]:
        middle = part.size // 2
        centre = part[middle - 1: middle + 1] if part.size % 2 == 0 else part[middle: middle + 1]
        return np.mean(centre), part.std()  # np.median's mean of the central pair

    median, std = median_std(values)
    for _ in range(5):
        lo = int(np.searchsorted(values, median - 3.0 * std, side="left"))
        hi = int(np.searchsorted(values, median + 3.0 * std, side="right"))
        if lo == 0 and hi == values.size:
            break
        values = values[lo:hi]
        median, std = median_std(values)
    return float(median), float(std)


def _first(header, keywords) -> Any:
    for key in keywords:
        value = header.get(key)
        if value not in (None, ""):
            return value
    return None


def _wcs_scale(header) -> float | None:
    """Arcsec per pixel of the header's celestial WCS (geometric mean of the two axes), None
    without one. A header without CTYPE1 and CTYPE2 has none: astropy.wcs is not imported."""
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None

    from astropy.io.fits import Header
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    from archive.fitsio import WCS_KEYWORD

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the WCS cards only: the rest of a header costs time, not scale
            wcs = WCS(Header([card for card in header.cards if WCS_KEYWORD.match(card.keyword)]), naxis=2)
        if wcs.has_celestial:
            scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
            if np.all(np.isfinite(scales)) and np.all(scales > 0):
                return float(np.sqrt(scales[0] * scales[1]))
    except Exception:  # noqa: BLE001 - a broken WCS is no WCS
        pass
    return None


def plate_scale(header, parameters: dict) -> float | None:
    """Arcsec per pixel: from a celestial WCS (geometric mean of the two axes), else
    206.265 x pixel size (um) / focal length (mm) from the configured keywords; None when
    neither is known."""
    scale = _wcs_scale(header)
    if scale is not None:
        return scale
    focal = _first(header, parameters.get("focal_length_keywords", ()))
    pixel = _first(header, parameters.get("pixel_size_keywords", ()))
    try:
        focal, pixel = float(focal), float(pixel)
    except (TypeError, ValueError):
        return None
    return 206.265 * pixel / focal if focal > 0 and pixel > 0 else None


def saturation_level(header, parameters: dict) -> float | None:
    """The saturation level (ADU): a configured keyword, else the largest value the raw data
    type holds (BITPIX with BZERO); None for floating-point data without a keyword."""
    value = _first(header, parameters.get("saturation_keywords", ()))
    try:
        if value is not None:
            return float(value)
    except (TypeError, ValueError):
        pass
    bitpix = header.get("BITPIX")
    if bitpix is None or int(bitpix) < 0:
        return None
    bzero = float(header.get("BZERO", 0.0))
    bscale = float(header.get("BSCALE", 1.0))
    bits = int(bitpix)
    top = 2 ** bits - 1 if bits == 8 else 2 ** (bits - 1) - 1
    return bzero + bscale * top


def _boxes(data: np.ndarray, fraction: float) -> tuple[np.ndarray, list[np.ndarray]]:
    ny, nx = data.shape
    by, bx = max(1, int(ny * fraction)), max(1, int(nx * fraction))
    cy, cx = ny // 2, nx // 2
    centre = data[cy - by // 2: cy - by // 2 + by, cx - bx // 2: cx - bx // 2 + bx]
    corners = [data[:by, :bx], data[:by, -bx:], data[-by:, :bx], data[-by:, -bx:]]
    return centre, corners


def compare_masters(new: np.ndarray, old: np.ndarray, n_sigma: float, normalize: bool) -> float | None:
    """The fraction of pixels of ``new`` that differ from ``old`` by more than ``n_sigma``
    robust standard deviations of the difference (1.4826 x its MAD), measured from zero, so a
    change of level counts; flats are first divided by their medians. None when the shapes
    differ. After BANZAI's comparison of a new calibration with the previous master."""
    if new.shape != old.shape:
        return None
    a, b = new.astype(np.float64), old.astype(np.float64)
    if normalize:
        a = a / np.nanmedian(a)
        b = b / np.nanmedian(b)
    diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if diff.size == 0:
        return None
    sigma = 1.4826 * float(np.median(np.abs(diff - np.median(diff))))
    if sigma == 0:
        return float(np.mean(diff != 0))
    return float(np.mean(np.abs(diff) > n_sigma * sigma))


def measure_file(job: MeasureJob) -> dict:
    """Measure one frame (see the module docstring for each figure and its source).

    Returns
    -------
    dict
        ``frame_id`` and the measured columns of :class:`archive.db.models.FrameMeasurement`
        (absent ones are None), plus ``parameters`` (what was used).

    Raises
    ------
    OSError, ValueError
        A file cannot be read or holds no image.
    """
    p = job.parameters
    data, header = read_pixels(job.path, dtype=np.float32)
    if data.ndim == 3:  # a colour cube (a demosaiced light): measured on its luminance
        data = luminance(data)
    if data.ndim != 2:
        raise ValueError(f"{job.path}: a {data.ndim}-d image cannot be measured")
    gain = _first(header, p.get("gain_keywords", ()))
    try:
        gain = float(gain) if gain is not None else job.gain_e_per_adu
    except (TypeError, ValueError):
        gain = job.gain_e_per_adu
    level, noise = clipped_stats(data)
    out: dict[str, Any] = {
        "frame_id": job.frame_id, "background_adu": level, "noise_adu": noise, "gain_e_per_adu": gain,
        "background_e": level * gain if gain else None, "noise_e": noise * gain if gain else None,
    }
    kind = job.kind.removeprefix("master_")
    if kind == "light":
        raw_header = header
        saturation_source = data
        if job.raw_path and job.raw_path != job.path:
            saturation_source, raw_header = read_pixels(job.raw_path, dtype=np.float32)
        saturation = saturation_level(raw_header, p)
        if saturation is not None:
            out["saturated_fraction"] = np.count_nonzero(
                saturation_source >= float(p.get("saturation_fraction", 0.95)) * saturation) / saturation_source.size
        # a calibrated frame no longer has the raw level: stars peaking near the raw
        # saturation are found by the offset between the two backgrounds
        offset = clipped_stats(saturation_source)[0] - level if saturation_source is not data else 0.0
        # the frame's pixels are not needed after detection: the background is subtracted in place
        stars = detect(data, p, None if saturation is None else saturation - offset, in_place=True)
        scale = job.plate_scale_arcsec or plate_scale(header, p) or plate_scale(raw_header, p)
        out.update({
            "n_stars": stars["n_stars"], "fwhm_px": stars["fwhm_px"], "eccentricity": stars["eccentricity"],
            "stars": stars["stars"], "plate_scale_arcsec": scale,
            "fwhm_arcsec": stars["fwhm_px"] * scale if stars["fwhm_px"] and scale else None,
        })
        if stars["star_flux"] and stars["fwhm_px"] and noise > 0:
            out["weight"] = (stars["star_flux"] / (noise * stars["fwhm_px"])) ** 2
    elif kind == "bias":
        out["read_noise_adu"] = noise
        out["read_noise_e"] = noise * gain if gain else None
    elif kind == "dark":
        bias_level = None
        if job.bias_path:
            bias_level = clipped_stats(read_pixels(job.bias_path, dtype=np.float32)[0])[0]
        elif job.bias_subtracted:
            bias_level = 0.0
        if bias_level is not None and job.exposure_s:
            current = (level - bias_level) / job.exposure_s
            out["dark_current_adu_s"] = current
            out["dark_current_e_s"] = current * gain if gain else None
        out["hot_pixels"] = int(np.count_nonzero(data > level + float(p.get("hot_sigma", 5.0)) * noise))
    elif kind == "flat":
        centre, corners = _boxes(data, float(p.get("box_fraction", 0.1)))
        c_level, c_noise = clipped_stats(centre)
        out["flat_snr"] = c_level / c_noise if c_noise > 0 else None
        corner_level = float(np.median([np.nanmedian(c) for c in corners]))
        out["flat_falloff"] = corner_level / c_level if c_level else None
    if job.kind.startswith("master_") and job.previous_path:
        previous, _ = read_pixels(job.previous_path, dtype=np.float32)
        out["changed_fraction"] = compare_masters(data, previous, float(p.get("compare_sigma", 5.0)),
                                                  normalize=kind == "flat")
    for key, value in list(out.items()):
        if isinstance(value, float) and not np.isfinite(value):
            out[key] = None
    return out
