"""Bad-pixel masks, the rules and the pixels: hot pixels from master darks, cold pixels from
master flats, or hot pixels from a sequence's own lights when no dark serves it (issue 10).

The rules (values in ``[bad_pixels]`` of ``configs/detector.toml``, per instrument overridable):

* **hot** (master darks): a pixel whose value exceeds ``median + hot_sigma * 1.4826 * MAD`` of
  its image, the median absolute deviation being the robust standard deviation of a Gaussian.
  The rule does not depend on the dark's scale (exposure time, bias subtracted or not); a
  pixel hot in any dark of the set is masked;
* **cold** (master flats): ``ccdproc.ccdmask`` (Valdes' IRAF ``ccdmask``: deviation from the
  median-filtered flat beyond ``lsigma`` below or ``hsigma`` above the local robust sigma; dead
  columns are found whole);
* **from the lights** (no master dark serves the sequence): in each light a pixel more than
  ``lights_sigma`` robust sigmas above the ``lights_filter_px`` median filter of its image is an
  outlier; a pixel that is one in at least ``lights_fraction`` of the lights is masked (stars
  move across the detector between frames, hot pixels stay).

A Bayer (one-shot colour) frame is judged per channel of its mosaic (every second pixel of
every second row): each channel has its own level and noise. This module holds the settings
and that judgement of pixels (arrays in, boolean images out); which masks are made, from which
frames, and their building and recording are :mod:`archive.calib.badpix_build`. Calibration
sets masked pixels to NaN (:mod:`archive.reduce.calibrate`), so they never drive star
detection or registration and are left out of every combine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archive.config import for_instrument, merge, read_toml
from archive.resources import resource_dir

#: Mask values: a pixel found hot (darks or lights), cold (flats); both: 3.
HOT, COLD = 1, 2
#: 1.4826 * MAD is the standard deviation of a Gaussian.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class BadPixelSettings:
    """``[bad_pixels]`` of ``configs/detector.toml`` for one instrument (see the module docstring).

    Attributes
    ----------
    hot_sigma : float
        Hot pixel threshold in robust sigmas above the master dark's median.
    ccdmask : dict
        Keyword arguments of ``ccdproc.ccdmask`` for master flats.
    lights_sigma : float
        Outlier threshold in a light, robust sigmas above its median filter.
    lights_filter_px : int
        Size of that median filter (pixels of the image or of a Bayer channel).
    lights_fraction : float
        Fraction of the lights a pixel must be an outlier in to be masked.
    lights_max_frames : int
        Lights read at most (evenly spread over the sequence).
    """

    hot_sigma: float = 6.0
    ccdmask: dict[str, Any] = field(default_factory=dict)
    lights_sigma: float = 6.0
    lights_filter_px: int = 5
    lights_fraction: float = 0.7
    lights_max_frames: int = 30

    @property
    def parameters(self) -> dict[str, Any]:
        """The settings as reduction parameters (in the mask's fingerprint)."""
        return asdict(self)


@functools.cache
def _table(config: str | None) -> dict[str, Any]:
    return read_toml(
        Path(config) if config else resource_dir("configs") / "detector.toml"
    ).get("bad_pixels", {})


def bad_pixel_settings(
    instrument: str | None = None, *, config: str | None = None
) -> BadPixelSettings:
    """The bad-pixel settings of ``instrument`` (its override merged over ``[bad_pixels]``).

    Parameters
    ----------
    instrument : str, optional
        Normalized instrument name (or an :class:`archive.config.InstrumentName`).
    config : str, optional
        Another detector file (tests).

    Returns
    -------
    BadPixelSettings

    Raises
    ------
    ArchiveError
        An unknown setting or a value of the wrong type.
    """
    table = dict(_table(config))
    overrides = table.pop("instruments", {})
    raw = merge(table, for_instrument(overrides, instrument, {}))
    try:
        return BadPixelSettings(
            hot_sigma=float(raw.get("hot_sigma", 6.0)),
            ccdmask=dict(raw.get("ccdmask", {})),
            lights_sigma=float(raw.get("lights_sigma", 6.0)),
            lights_filter_px=int(raw.get("lights_filter_px", 5)),
            lights_fraction=float(raw.get("lights_fraction", 0.7)),
            lights_max_frames=int(raw.get("lights_max_frames", 30)),
        )
    except (TypeError, ValueError) as exc:
        from archive.errors import ConfigError

        raise ConfigError(f"configs/detector.toml [bad_pixels]: {exc}") from exc


# -- pixels ----------------------------------------------------------------------------------------


def channels(
    shape: tuple[int, ...], bayer_pattern: str | None
) -> list[tuple[slice, slice]]:
    """The parts of an image judged apart: the whole image, or a Bayer mosaic's four channels.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx).
    bayer_pattern : str or None
        The mosaic's pattern (``frames.bayer_pattern``); None for a monochrome sensor.

    Returns
    -------
    list of (slice, slice)
        Row and column slices.
    """
    if not bayer_pattern:
        return [(slice(None), slice(None))]
    return [(slice(r, None, 2), slice(c, None, 2)) for r in (0, 1) for c in (0, 1)]


def per_channel(
    image: np.ndarray, bayer_pattern: str | None, judge: Callable[[np.ndarray], np.ndarray | None]
) -> np.ndarray:
    """``judge`` applied to each part of ``image`` (:func:`channels`), its verdicts put back
    in place.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    bayer_pattern : str or None
    judge : callable
        One part -> bool array of its shape, or None when it cannot judge (no finite pixel).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    out = np.zeros(image.shape, dtype=bool)
    for rows, cols in channels(image.shape, bayer_pattern):
        verdict = judge(image[rows, cols])
        if verdict is not None:
            out[rows, cols] = verdict
    return out


def robust_sigma(values: np.ndarray) -> tuple[float, float]:
    """The median and 1.4826 * MAD of the finite ``values``."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return float("nan"), float("nan")
    median = float(np.median(finite))
    return median, MAD_TO_SIGMA * float(np.median(np.abs(finite - median)))


def hot_pixels(
    dark: np.ndarray, hot_sigma: float, bayer_pattern: str | None = None
) -> np.ndarray:
    """Pixels of a master dark above ``median + hot_sigma * 1.4826 * MAD`` (per Bayer channel).

    Parameters
    ----------
    dark : ndarray, shape (ny, nx)
    hot_sigma : float
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """

    def judge(part: np.ndarray) -> np.ndarray | None:
        median, sigma = robust_sigma(part)
        return part > median + hot_sigma * sigma if np.isfinite(median) else None

    return per_channel(np.asarray(dark, dtype=np.float64), bayer_pattern, judge)


def cold_pixels(
    flat: np.ndarray,
    ccdmask: dict[str, Any] | None = None,
    bayer_pattern: str | None = None,
) -> np.ndarray:
    """Bad pixels of a master flat by ``ccdproc.ccdmask`` (per Bayer channel).

    Parameters
    ----------
    flat : ndarray, shape (ny, nx)
    ccdmask : dict, optional
        Keyword arguments of ``ccdproc.ccdmask``.
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    import ccdproc

    def judge(part: np.ndarray) -> np.ndarray:
        return np.asarray(ccdproc.ccdmask(np.nan_to_num(part, nan=np.nanmedian(part)), **(ccdmask or {})))

    return per_channel(np.asarray(flat, dtype=np.float64), bayer_pattern, judge)


def light_outliers(
    light: np.ndarray, sigma: float, filter_px: int, bayer_pattern: str | None = None
) -> np.ndarray:
    """Pixels of one light more than ``sigma`` robust sigmas above its median filter.

    Parameters
    ----------
    light : ndarray, shape (ny, nx)
    sigma : float
    filter_px : int
        Size of the square median filter (pixels of a channel for a Bayer mosaic).
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    from scipy.ndimage import median_filter

    def judge(part: np.ndarray) -> np.ndarray | None:
        residual = part - median_filter(part, size=filter_px, mode="reflect")
        median, spread = robust_sigma(residual[::2, ::2])  # a quarter of the pixels: the same statistics
        return residual > median + sigma * spread if np.isfinite(median) and spread > 0 else None

    return per_channel(np.asarray(light, dtype=np.float32), bayer_pattern, judge)


def mask_from_lights(
    lights: Iterable[np.ndarray],
    settings: BadPixelSettings,
    bayer_pattern: str | None = None,
) -> np.ndarray:
    """Pixels that are outliers (:func:`light_outliers`) in at least ``lights_fraction`` of ``lights``.

    Parameters
    ----------
    lights : iterable of ndarray, shape (ny, nx)
        Read one at a time (a generator keeps one light in memory).
    settings : BadPixelSettings
    bayer_pattern : str, optional

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        No lights.
    """
    counts, n = None, 0
    for light in lights:
        hits = light_outliers(
            light, settings.lights_sigma, settings.lights_filter_px, bayer_pattern
        )
        counts = hits.astype(np.uint16) if counts is None else counts + hits
        n += 1
    if counts is None:
        raise ValueError("no lights to find bad pixels in")
    return counts >= settings.lights_fraction * n
