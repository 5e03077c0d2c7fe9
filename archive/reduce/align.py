"""Registering calibrated lights of one target and filter onto a reference frame.

Stars are detected with SEP (Source Extractor's algorithms, as astroalign does internally);
the transform (rotation, scale, translation) is astroalign's triangle-asterism match between
the brightest sources, and the frame is warped onto the reference's pixel grid (bilinear). Pixels outside
the warped frame's footprint become NaN, so a stack ignores them.

Reference rule (``[register] reference = "most_stars"``): the frame with the most sources
detected above ``detect_sigma`` times the background RMS; ties go to the earliest DATE-OBS
(the order the caller passes). A shift larger than ``max_shift_fraction`` of the field
(astro_reduce's 15 %) is a warning.

What is not a star cannot drive the match (issue 10: hot pixels of a night without darks
locked every shift at 0 px): a source of fewer than ``min_pixels`` pixels above the threshold,
or narrower than ``min_fwhm_px`` (FWHM estimated from SEP's second moments, 2.355
sqrt((a^2 + b^2) / 2)), is dropped at detection, and a source found
at the same detector position (within ``fixed_pattern_px``) in at least ``fixed_fraction`` of
a sequence's frames is fixed pattern (:func:`fixed_pattern`), dropped before matching. A
transform is accepted only with ``min_matches`` matched stars and an RMS residual of at most
``max_residual_px``; a frame that fails is tried once more with a lower threshold and more
stars, then *rejected* with its reason (:class:`AlignmentRejected`), never failed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from archive import keywords as kw
from archive.fitsio import WCS_KEYWORD, product_header, read_pixels, set_card, write_atomic
from archive.reduce.colour import luminance

log = logging.getLogger(__name__)


class AlignmentRejected(ValueError):
    """A frame that cannot be aligned for a reason of its own (too few stars, no transform,
    too few matches, too large a residual): it is rejected, not failed."""


#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
_FWHM_PER_SIGMA = 2.3548


#: SEP's default pixel stack (pixels of the objects being extracted at one time).
_PIXSTACK = 300_000


def extract_sources(image: np.ndarray, thresh: float, err: float, minarea: int = 5,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """``sep.extract`` of a background-subtracted float32 image, with SEP's default pixel stack.

    The stack is a buffer SEP allocates on every call (its size times about 50 bytes): the
    default 300,000 pixels costs a sparse 1024 x 1024 frame 10 ms, one pixel per image pixel
    25 ms. A crowded field that overflows it ("internal pixel buffer full") is extracted again
    with a stack of one pixel per image pixel, then the stack is set back.

    Raises
    ------
    Exception
        SEP's own, when the larger stack overflows too or too many objects are deblended.
    """
    import sep

    try:
        return sep.extract(image, thresh, err=err, minarea=minarea, mask=mask)
    except Exception as exc:  # sep raises plain Exception on buffer overflow
        if "pixel buffer full" not in str(exc) or image.size <= _PIXSTACK:
            raise
    sep.set_extract_pixstack(int(image.size))
    try:
        return sep.extract(image, thresh, err=err, minarea=minarea, mask=mask)
    finally:
        sep.set_extract_pixstack(_PIXSTACK)


def detect_stars(data: np.ndarray, detect_sigma: float = 5.0, max_sources: int | None = 50,
                 min_fwhm_px: float = 0.0, min_pixels: int = 0) -> np.ndarray:
    """Positions of the brightest sources, shape (n, 2), columns x, y (pixels), brightest first.

    Non-finite pixels (NaN, inf) are masked: they count neither in SEP's background map nor
    in a source.

    Not stars, left out: sources with fewer than ``min_pixels`` pixels above the threshold in
    the unsmoothed image (SEP's ``tnpix``: a hot pixel or a cosmic-ray hit has one or two,
    however SEP's matching filter spreads it), and sources whose FWHM (2.355 sqrt((a^2 + b^2) /
    2), SEP's second-moment semi-axes) is below ``min_fwhm_px``.
    """
    import sep

    image = np.array(data, dtype=np.float32, order="C")  # a copy: the background is subtracted in place
    bad = ~np.isfinite(image)  # masked: neither background nor sources (a registered frame's border)
    mask = bad if bad.any() else None
    image[bad] = 0.0
    background = sep.Background(image, mask=mask)
    background.subfrom(image)
    try:
        sources = extract_sources(image, detect_sigma, background.globalrms, minarea=5, mask=mask)
    except Exception as exc:  # noqa: BLE001 - sep raises plain Exception on buffer overflow
        log.warning("source extraction failed: %s", exc)
        return np.empty((0, 2))
    if min_pixels > 0:
        sources = sources[sources["tnpix"] >= min_pixels]
    if min_fwhm_px > 0:
        fwhm = _FWHM_PER_SIGMA * np.sqrt((sources["a"] ** 2 + sources["b"] ** 2) / 2)
        sources = sources[fwhm >= min_fwhm_px]
    order = np.argsort(sources["flux"])[::-1]
    xy = np.column_stack([sources["x"], sources["y"]])[order]
    return xy if max_sources is None else xy[: max(max_sources, 0) or None]


#: Sources kept per frame for the fixed-pattern check (the brightest).
_KEEP_FOR_PATTERN = 400


def count_stars(path: str, detect_sigma: float = 5.0, max_sources: int = 50, min_fwhm_px: float = 0.0,
                min_pixels: int = 0) -> dict:
    """Detect stars in ``path`` (a worker task): ``{'path', 'n_stars', 'xy'}``.

    ``n_stars`` counts every detection at least ``min_fwhm_px`` wide; ``xy`` keeps the
    brightest 400 (the caller drops fixed pattern, then keeps ``max_sources`` as control points).
    A colour cube (3, ny, nx) is searched on its luminance (:func:`archive.reduce.colour.luminance`).

    Raises
    ------
    OSError, ValueError
        The file cannot be read or holds no image.
    """
    data = luminance(read_pixels(path, dtype=np.float32)[0])
    everything = detect_stars(data, detect_sigma, max_sources=None, min_fwhm_px=min_fwhm_px, min_pixels=min_pixels)
    return {"path": path, "n_stars": len(everything), "xy": everything[:max(max_sources, _KEEP_FOR_PATTERN)]}


def fixed_pattern(star_lists: Sequence[np.ndarray], tolerance_px: float = 0.15,
                  min_fraction: float = 0.6) -> list[np.ndarray]:
    """Which sources are fixed in detector coordinates across a sequence: hot pixels and
    other fixed pattern, not stars.

    A source is fixed when a source of at least ``min_fraction`` of the *other* frames lies
    within ``tolerance_px`` of its position. Stars move between frames by the mount's drift,
    guiding and seeing (tenths of a pixel at least); fixed pattern does not move at all.
    Sequences of fewer than three frames are not judged.

    Parameters
    ----------
    star_lists : sequence of ndarray, shape (n_i, 2)
        x, y positions (pixels) per frame.
    tolerance_px : float
        Largest distance (pixels) counted as the same position.
    min_fraction : float
        Fraction of the other frames a source must recur in.

    Returns
    -------
    list of ndarray of bool
        Per frame, True for a fixed source.
    """
    from scipy.spatial import cKDTree

    lists = [np.asarray(xy, dtype=float).reshape(-1, 2) for xy in star_lists]
    if len(lists) < 3:
        return [np.zeros(len(xy), dtype=bool) for xy in lists]
    trees = [cKDTree(xy) if len(xy) else None for xy in lists]
    out = []
    for i, xy in enumerate(lists):
        hits = np.zeros(len(xy), dtype=int)
        for j, tree in enumerate(trees):
            if j == i or tree is None or not len(xy):
                continue
            distance, _ = tree.query(xy, k=1, distance_upper_bound=tolerance_px)
            hits += np.isfinite(distance)
        out.append(hits >= min_fraction * (len(lists) - 1))
    return out


def find_transform(source_xy, target_xy, max_control_points: int = 50, *, min_matches: int = 3,
                   max_residual_px: float = np.inf):
    """The similarity transform taking ``source_xy`` onto ``target_xy``, checked.

    ``astroalign.find_transform`` on control points, arrays of shape (n, 2) of x, y pixel
    positions (Beroiz, Cabral & Sanchez 2020, Astronomy and Computing 32, 100384: matching
    triangle invariants of the brightest sources, then RANSAC). The transform is accepted
    with at least ``min_matches`` matched stars whose RMS residual (distance between a
    transformed source star and its match, pixels) is at most ``max_residual_px``.

    Returns
    -------
    transform : skimage.transform.SimilarityTransform
    matches : int
        Matched stars.
    residual : float
        RMS residual of the matches, pixels.

    Raises
    ------
    AlignmentRejected
        Too few stars, no transform found, too few matches or too large a residual.
    """
    import astroalign

    if len(source_xy) < 3 or len(target_xy) < 3:
        raise AlignmentRejected(f"too few stars ({len(source_xy)} here, {len(target_xy)} in the reference)")
    try:
        transform, (src, dst) = astroalign.find_transform(np.asarray(source_xy, dtype=float),
                                                          np.asarray(target_xy, dtype=float),
                                                          max_control_points=max_control_points)
    except Exception as exc:  # noqa: BLE001 - astroalign raises MaxIterError, ValueError, TypeError
        raise AlignmentRejected(f"no transform found ({type(exc).__name__}: {exc})") from exc
    residual = float(np.sqrt(np.mean(np.sum((transform(src) - dst) ** 2, axis=1)))) if len(src) else np.inf
    if len(src) < min_matches:
        raise AlignmentRejected(f"{len(src)} matched stars, fewer than {min_matches}")
    if residual > max_residual_px:
        raise AlignmentRejected(f"residual {residual:.2f} px over {len(src)} matched stars, above {max_residual_px} px")
    return transform, len(src), residual


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
    min_matches, max_residual_px : int, float
        What a transform needs to be accepted (:func:`find_transform`).
    min_fwhm_px, min_pixels : float, int
        Narrower or smaller sources are not stars (:func:`detect_stars`).
    retry_sigma : float
        Detection threshold of the second try (0: no second try).
    reference_xy_retry : ndarray, shape (m, 2)
        The reference's sources at ``retry_sigma``, fixed pattern dropped.
    fixed_xy : ndarray, shape (k, 2)
        The sequence's fixed-pattern positions, dropped from the second try's detections.
    fixed_pattern_px : float
        Distance within which a detection is taken for fixed pattern.
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
    min_matches: int = 3
    max_residual_px: float = np.inf
    min_fwhm_px: float = 0.0
    min_pixels: int = 0
    retry_sigma: float = 0.0
    reference_xy_retry: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    fixed_xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    fixed_pattern_px: float = 0.15


def wcs_cards(header) -> dict:
    """The WCS cards of ``header`` (keyword -> value), to hand to :class:`RegistrationJob`."""
    return {key: header[key] for key in header if WCS_KEYWORD.match(key)}


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

    A colour cube (3, ny, nx) is matched on its luminance (the retry's detections), and each
    plane is warped by the same transform.

    Returns
    -------
    dict
        ``ok`` (bool), ``output``, ``dx``, ``dy`` (pixels), ``rotation_deg``, ``scale``,
        ``shift_fraction``, ``warning`` (str or None), ``matches``, ``residual_px``,
        ``retried`` (the second try succeeded); when not ok, ``rejected`` (True), ``error``
        (the reason of both tries) and ``failure`` ('alignment'). A frame that cannot be
        aligned is rejected: returned, not raised, so that the caller lists it, leaves it out
        of the stack and does not try again with the same inputs.

    Raises
    ------
    OSError, ValueError
        A file cannot be read or written (not an alignment failure: worth another try).
    """
    data, header = read_pixels(job.source, dtype=np.float32)
    ny, nx = data.shape[-2:]
    matches, residual, retried = None, None, False
    if job.source == job.reference:
        aligned = data
        dx = dy = rotation = 0.0
        scale = 1.0
    else:
        try:
            transform, matches, residual = find_transform(
                job.source_xy, job.reference_xy, job.max_control_points, min_matches=job.min_matches,
                max_residual_px=job.max_residual_px)
        except AlignmentRejected as first:
            if not job.retry_sigma:
                return _rejected(job, str(first))
            more = without(detect_stars(luminance(data), job.retry_sigma, max_sources=None, min_fwhm_px=job.min_fwhm_px,
                                        min_pixels=job.min_pixels),
                           job.fixed_xy, job.fixed_pattern_px)
            points = 2 * job.max_control_points
            try:
                transform, matches, residual = find_transform(
                    more[:points], job.reference_xy_retry[:points], points, min_matches=job.min_matches,
                    max_residual_px=job.max_residual_px)
            except AlignmentRejected as second:
                return _rejected(job, f"{first}; again at {job.retry_sigma:g} sigma with up to {points} stars: {second}")
            retried = True
        aligned = warp_onto(data, transform.params, (ny, nx)) if data.ndim == 2 else np.stack(
            [warp_onto(plane, transform.params, (ny, nx)) for plane in data])
        dx, dy = (float(v) for v in transform.translation)
        rotation = float(np.degrees(transform.rotation))
        scale = float(transform.scale)
    shift_fraction = max(abs(dx) / nx, abs(dy) / ny)
    warning = None
    if shift_fraction > job.max_shift_fraction:
        warning = (f"{job.source}: shift ({dx:.1f}, {dy:.1f}) px is {shift_fraction:.0%} of the field, "
                   f"above {job.max_shift_fraction:.0%}")
    out = product_header(header)
    if job.source != job.reference and job.reference_wcs:
        for key in [k for k in out if WCS_KEYWORD.match(k)]:
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
        "scale": scale, "shift_fraction": shift_fraction, "warning": warning, "matches": matches,
        "residual_px": residual, "retried": retried,
    }


def _rejected(job: RegistrationJob, reason: str) -> dict:
    return {"ok": False, "rejected": True, "source": job.source, "output": job.output, "failure": "alignment",
            "error": reason}


def without(xy: np.ndarray, fixed_xy: np.ndarray, tolerance_px: float) -> np.ndarray:
    """``xy`` (n, 2) less the sources within ``tolerance_px`` of a fixed-pattern position."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if not len(xy) or not len(fixed_xy):
        return xy
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(np.asarray(fixed_xy, dtype=float)).query(xy, k=1, distance_upper_bound=tolerance_px)
    return xy[~np.isfinite(distance)]
