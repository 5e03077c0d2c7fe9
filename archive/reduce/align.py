"""Registering calibrated lights of one target and filter onto a reference frame.

Stars are detected with SEP (Source Extractor's algorithms, as astroalign does internally);
the transform (rotation, scale, translation) is astroalign's triangle-asterism match between
the brightest sources, and the frame is warped onto the reference's pixel grid (bilinear). Pixels outside
the warped frame's footprint become NaN, so a stack ignores them.

Reference rule (``[register] reference = "most_stars"``): the frame with the most sources
detected above ``detect_sigma`` times the background RMS; ties go to the earliest DATE-OBS
(the order the caller passes). A frame that fails to align is reported and left out.
A shift larger than ``max_shift_fraction`` of the field (astro_reduce's 15 %) is a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from archive import keywords as kw
from archive.fitsio import product_header, read_pixels, set_card, write_atomic

log = logging.getLogger(__name__)


def detect_stars(data: np.ndarray, detect_sigma: float = 5.0, max_sources: int = 50) -> np.ndarray:
    """Positions of the brightest sources, shape (n, 2), columns x, y (pixels), brightest first."""
    import sep

    image = np.array(data, dtype=np.float32, order="C")  # a copy: the background is subtracted in place
    image[np.isnan(image)] = 0.0
    background = sep.Background(image)
    background.subfrom(image)
    sep.set_extract_pixstack(max(300000, image.size))
    try:
        sources = sep.extract(image, detect_sigma, err=background.globalrms, minarea=5)
    except Exception as exc:  # noqa: BLE001 - sep raises plain Exception on buffer overflow
        log.warning("source extraction failed: %s", exc)
        return np.empty((0, 2))
    order = np.argsort(sources["flux"])[::-1]
    xy = np.column_stack([sources["x"], sources["y"]])[order]
    return xy if max_sources is None else xy[: max(max_sources, 0) or None]


def count_stars(path: str, detect_sigma: float = 5.0, max_sources: int = 50) -> dict:
    """Detect stars in ``path`` (a worker task): ``{'path', 'n_stars', 'xy'}``.

    ``n_stars`` counts every detection; ``xy`` keeps the ``max_sources`` brightest (control
    points for matching).

    Raises
    ------
    OSError, ValueError
        The file cannot be read or holds no image.
    """
    data, _ = read_pixels(path, dtype=np.float32)
    everything = detect_stars(data, detect_sigma, max_sources=None)
    return {"path": path, "n_stars": len(everything), "xy": everything[:max_sources]}


def find_transform(source_xy, target_xy, max_control_points: int = 50):
    """The similarity transform taking ``source_xy`` onto ``target_xy``.

    ``astroalign.find_transform`` on control points, arrays of shape (n, 2) of x, y pixel
    positions (Beroiz, Cabral & Sanchez 2020, Astronomy and Computing 32, 100384: matching
    triangle invariants of the brightest sources, then RANSAC).

    Returns
    -------
    skimage.transform.SimilarityTransform

    Raises
    ------
    ValueError, astroalign.MaxIterError
        Too few stars, or no transform found.
    """
    import astroalign

    transform, _ = astroalign.find_transform(np.asarray(source_xy, dtype=float), np.asarray(target_xy, dtype=float),
                                             max_control_points=max_control_points)
    return transform


def choose_reference(star_counts: Sequence[tuple[str, int]]) -> str:
    """The reference by the "most stars" rule: most detections, ties to the earliest listed.

    Raises
    ------
    ValueError
        No frames.
    """
    if not star_counts:
        raise ValueError("no frames to choose a reference from")
    best = max(range(len(star_counts)), key=lambda i: (star_counts[i][1], -i))
    return star_counts[best][0]


@dataclass(frozen=True)
class RegistrationJob:
    """One frame to warp onto the reference (picklable).

    Attributes
    ----------
    source, output, reference : str
        Calibrated frame, registered file to write, the reference frame.
    source_xy, reference_xy : ndarray, shape (n, 2)
        Control points (brightest sources) of source and reference.
    max_shift_fraction : float
        Warn above this shift, as a fraction of the field's width or height.
    reference_wcs : dict
        The reference's WCS cards (:func:`wcs_cards`): the warped pixels are on its grid.
    max_control_points : int
        Brightest sources astroalign matches (``[register] max_control_points``).
    header : dict
        Extra output cards.
    """

    source: str
    output: str
    reference: str
    source_xy: np.ndarray
    reference_xy: np.ndarray
    max_shift_fraction: float = 0.15
    reference_wcs: dict = field(default_factory=dict)
    header: dict = field(default_factory=dict)
    max_control_points: int = 50


#: Header keywords of a celestial WCS (FITS WCS papers I and II, plus the AIPS CROTA/CDELT
#: convention): replaced by the reference's in a registered frame.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CUNIT\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
                      r"LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|[AB]P?_\d+_\d+|[AB]P?_ORDER)$")


def wcs_cards(header) -> dict:
    """The WCS cards of ``header`` (keyword -> value), to hand to :class:`RegistrationJob`."""
    return {key: header[key] for key in header if _WCS_KEY.match(key)}


def warp_onto(data: np.ndarray, params: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample ``data`` onto a grid of ``shape`` given the 3x3 source->target matrix ``params``.

    ``params`` acts on (x, y, 1) pixel coordinates (astroalign's / scikit-image's
    convention); bilinear interpolation (``skimage.transform.warp``, whose compiled path for
    an affine matrix is about 2.5x faster than ``scipy.ndimage.affine_transform``), NaN
    outside the source's footprint. Returns float32.
    """
    from skimage.transform import warp

    return warp(np.asarray(data, dtype=np.float32), np.linalg.inv(params), output_shape=shape, order=1,
                mode="constant", cval=np.nan, clip=False, preserve_range=True).astype(np.float32, copy=False)


def register_file(job: RegistrationJob) -> dict:
    """Align ``job.source`` onto the reference grid and write ``job.output``.

    Returns
    -------
    dict
        ``ok`` (bool), ``output``, ``dx``, ``dy`` (pixels), ``rotation_deg``, ``scale``,
        ``shift_fraction``, ``warning`` (str or None); when not ok, ``error`` (str) and
        ``failure`` ('alignment'). Alignment failures (too few stars, no transform found) are
        deterministic: they are returned, not raised, so that the caller reports the frame,
        leaves it out of the stack and does not try again with the same inputs.

    Raises
    ------
    OSError, ValueError
        A file cannot be read or written (not an alignment failure: worth another try).
    """
    data, header = read_pixels(job.source, dtype=np.float32)
    ny, nx = data.shape
    try:
        if job.source == job.reference:
            aligned = data
            dx = dy = rotation = 0.0
            scale = 1.0
        else:
            if len(job.source_xy) < 3 or len(job.reference_xy) < 3:
                raise ValueError(f"too few stars ({len(job.source_xy)} here, {len(job.reference_xy)} in the reference)")
            transform = find_transform(job.source_xy, job.reference_xy, job.max_control_points)
            aligned = warp_onto(data, transform.params, (ny, nx))
            dx, dy = (float(v) for v in transform.translation)
            rotation = float(np.degrees(transform.rotation))
            scale = float(transform.scale)
    except Exception as exc:  # noqa: BLE001 - astroalign raises MaxIterError, ValueError, TypeError
        return {"ok": False, "source": job.source, "output": job.output, "failure": "alignment",
                "error": f"{type(exc).__name__}: {exc}"}
    shift_fraction = max(abs(dx) / nx, abs(dy) / ny)
    warning = None
    if shift_fraction > job.max_shift_fraction:
        warning = (f"{job.source}: shift ({dx:.1f}, {dy:.1f}) px is {shift_fraction:.0%} of the field, "
                   f"above {job.max_shift_fraction:.0%}")
    out = product_header(header)
    if job.source != job.reference and job.reference_wcs:
        for key in [k for k in out if _WCS_KEY.match(k)]:
            out.remove(key, ignore_missing=True, remove_all=True)
        out.update(job.reference_wcs)
    out[kw.IMAGE_TYPE] = kw.IMAGE_TYPE_VALUES["registered"]
    set_card(out, kw.REFERENCE, job.reference.rsplit("/", 1)[-1], "registration reference")
    out[kw.SHIFT_X] = (dx, "[pix] x shift onto the reference")
    out[kw.SHIFT_Y] = (dy, "[pix] y shift onto the reference")
    out[kw.ROTATION] = (rotation, "[deg] rotation onto the reference")
    out[kw.SCALE] = (scale, "scale onto the reference")
    for key, value in job.header.items():
        out[key] = value
    write_atomic(job.output, aligned, out)
    return {
        "ok": True, "source": job.source, "output": job.output, "dx": dx, "dy": dy, "rotation_deg": rotation,
        "scale": scale, "shift_fraction": shift_fraction, "warning": warning,
    }
