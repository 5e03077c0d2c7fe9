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

from archive.reduce import keywords as kw
from archive.reduce.fitsio import product_header, read_pixels, set_card, write_atomic

log = logging.getLogger(__name__)


def detect_stars(data: np.ndarray, detect_sigma: float = 5.0, max_sources: int = 50) -> np.ndarray:
    """Positions of the brightest sources, shape (n, 2), columns x, y (pixels), brightest first."""
    import sep

    image = np.ascontiguousarray(data, dtype=np.float32)
    if np.isnan(image).any():
        image = np.nan_to_num(image, nan=0.0)
    background = sep.Background(image)
    residual = image - background.back()
    sep.set_extract_pixstack(max(300000, image.size))
    try:
        sources = sep.extract(residual, detect_sigma, err=background.globalrms, minarea=5)
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
    """
    data, _ = read_pixels(path, dtype=np.float32)
    everything = detect_stars(data, detect_sigma, max_sources=None)
    xy = everything[:max_sources]
    return {"path": path, "n_stars": len(everything), "xy": xy, "asterisms": asterisms(xy)}


def asterisms(xy: np.ndarray):
    """astroalign's triangle invariants of the control points ``xy`` (computed once per frame).

    Returns ``(invariants, triangles)``, or ``None`` for fewer than three points or when this
    astroalign version does not expose them (then :func:`find_transform` lets astroalign
    compute them).
    """
    import astroalign

    if len(xy) < 3 or not hasattr(astroalign, "_generate_invariants"):
        return None
    try:
        return astroalign._generate_invariants(np.asarray(xy))
    except Exception:  # noqa: BLE001 - degenerate geometry: astroalign decides later
        return None


def find_transform(source_xy, target_xy, source_asterisms=None, target_asterisms=None):
    """The similarity transform taking ``source_xy`` onto ``target_xy`` (astroalign's algorithm).

    This is ``astroalign.find_transform`` on control points (Beroiz, Cabral & Sanchez 2020,
    Astronomy and Computing 32, 100384: matching triangle invariants, then RANSAC), with the
    triangle invariants of each frame computed once (:func:`asterisms`) instead of once per
    pair; without them it calls astroalign directly.

    Raises
    ------
    ValueError, astroalign.MaxIterError
        Too few stars, or no transform found.
    """
    import astroalign

    needed = ("_MatchTransform", "_ransac", "PIXEL_TOL", "MIN_MATCHES_FRACTION")
    if source_asterisms is None or target_asterisms is None or not all(hasattr(astroalign, n) for n in needed):
        return astroalign.find_transform(np.asarray(source_xy), np.asarray(target_xy))[0]
    from scipy.spatial import KDTree

    source_xy, target_xy = np.asarray(source_xy), np.asarray(target_xy)
    (s_inv, s_ast), (t_inv, t_ast) = source_asterisms, target_asterisms
    matches_list = KDTree(s_inv).query_ball_tree(KDTree(t_inv), r=0.1)
    matches = np.array([list(zip(t1, t2)) for t1, t2_list in zip(s_ast, matches_list) for t2 in t_ast[t2_list]])
    if len(matches) == 0:
        raise ValueError("no matching star triangles between the frame and the reference")
    model = astroalign._MatchTransform(source_xy, target_xy)
    min_matches = max(1, min(10, int(len(matches) * astroalign.MIN_MATCHES_FRACTION)))
    if (len(source_xy) == 3 or len(target_xy) == 3) and len(matches) == 1:
        return model.fit(matches)
    best, _ = astroalign._ransac(matches, model, astroalign.PIXEL_TOL, min_matches)
    return best


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
    source_asterisms, reference_asterisms : tuple, optional
        Triangle invariants from :func:`asterisms` (computed by :func:`count_stars`).
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
    source_asterisms: tuple | None = None
    reference_asterisms: tuple | None = None


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
    convention); bilinear interpolation (scipy.ndimage), NaN outside the source's footprint.
    """
    from scipy import ndimage

    inverse = np.linalg.inv(params)
    matrix = np.array([[inverse[1, 1], inverse[1, 0]], [inverse[0, 1], inverse[0, 0]]])
    offset = np.array([inverse[1, 2], inverse[0, 2]])
    return ndimage.affine_transform(np.asarray(data, dtype=np.float32), matrix, offset, output_shape=shape,
                                    order=1, mode="constant", cval=np.nan, prefilter=False)


def register_file(job: RegistrationJob) -> dict:
    """Align ``job.source`` onto the reference grid and write ``job.output``.

    Returns
    -------
    dict
        ``ok`` (bool), ``output``, ``dx``, ``dy`` (pixels), ``rotation_deg``, ``scale``,
        ``shift_fraction``, ``warning`` (str or None), ``error`` (str, when not ok).
        Alignment failures are returned, not raised, so that the caller reports the frame and
        leaves it out of the stack.
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
            transform = find_transform(job.source_xy, job.reference_xy, job.source_asterisms, job.reference_asterisms)
            aligned = warp_onto(data, transform.params, (ny, nx))
            dx, dy = (float(v) for v in transform.translation)
            rotation = float(np.degrees(transform.rotation))
            scale = float(transform.scale)
    except Exception as exc:  # noqa: BLE001 - astroalign raises MaxIterError, ValueError, TypeError
        return {"ok": False, "source": job.source, "output": job.output, "error": f"{type(exc).__name__}: {exc}"}
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
