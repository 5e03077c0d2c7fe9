"""Stars of a light: detection, centres, shapes and FWHM (the pixel work of
:func:`archive.reduce.measure.measure_file` for lights).

Libraries: background and source detection are SEP's (Barbary 2016, JOSS 1, 58: Source
Extractor's algorithms as a library; the same detection :mod:`archive.reduce.align` uses);
the Moffat fits are ``scipy.optimize.leastsq`` (MINPACK), isolation ``scipy.spatial.cKDTree``.

Sources are detected by ``sep.extract`` above ``detect_sigma`` times the global RMS of
SEP's background map (at least ``minarea`` connected pixels), without SEP flags (not
blended, not truncated at the edge) and peaking below the saturation level. Detection
runs on the frame binned ``detect_binning`` x ``detect_binning`` (the median of each block,
:func:`_binned`; ``minarea`` divided by the block's area, rounded up; a frame under 32
blocks a side is not binned): a star of FWHM 2-6 px is found as surely on a quarter of the
pixels, SEP's background mesh and matched filter cost a quarter as much, and a hot pixel or
cosmic-ray hit alone in its block makes no detection. A binned frame resolves close pairs
less: in a crowded field (the core of M13) it counts about 30 % fewer unblended stars; in
the sparse fields of the test data it counts the same within two or three stars.
Everything else is measured on the full-resolution pixels, the binned background map
subtracted: each star's centre, shape and semi-axes come from adaptive Gaussian-weighted
second moments (:func:`star_shapes`, Bernstein & Jarvis 2002; up to the 5000 brightest),
its peak (for saturation) is the largest pixel within ``detect_binning`` px of the centre,
its flux is the sum in a circle of radius 2 x the frame's median FWHM
(:func:`aperture_flux`; a median-binned block would lose a sharp star's core). Detections
sharper than ``min_fwhm_px`` (hot pixels, cosmic rays) are not stars. ``n_stars`` counts
the stars; they are listed brightest first.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

#: Brightest detections whose shapes are measured (the rest are not counted as stars).
MOMENT_STARS = 5000
#: Radius of the aperture of a star's flux, in units of the frame's median FWHM: 4.7 sigma of
#: a Gaussian star (all but 1e-5 of its flux), about 95 % of a Moffat star's of beta 3.
APERTURE_FWHM = 2.0


def detect(data: np.ndarray, parameters: dict, saturation: float | None = None, *, in_place: bool = False) -> dict:
    """Detect and measure the stars of a light (see the module docstring).

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        The image, ADU.
    parameters : dict
        ``detect_sigma``, ``minarea``, ``detect_binning`` (default 1), ``max_stars``,
        ``saturation_fraction``, ``fit_stars``, ``isolation_px``, ``min_fwhm_px``.
    saturation : float, optional
        Saturation level of ``data`` (ADU); stars peaking above it are left out.
    in_place : bool
        ``data`` (float32, C order) may be overwritten (the background is subtracted from it
        and non-finite pixels set to 0) instead of copied.

    Returns
    -------
    dict
        ``n_stars``, ``fwhm_px``, ``eccentricity``, ``star_flux`` (the summed aperture flux
        of the stars, ADU), ``stars`` (list of [x, y, flux, fwhm_px, a, b], brightest first:
        x, y the moments' centre, a, b their semi-axes (standard deviations), in
        full-resolution pixels).
    """
    import sep

    from archive.reduce.align import extract_sources

    if in_place and data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable:
        image = data
    else:
        image = np.array(data, dtype=np.float32, order="C")
    bad = ~np.isfinite(image)
    if bad.any():
        image[bad] = 0.0
    else:
        bad = None
    factor = int(parameters.get("detect_binning", 1))
    factor = factor if factor > 1 and min(image.shape) >= 32 * factor else 1
    detection, mask = (image, bad) if factor == 1 else _binned(image, bad, factor)
    background = sep.Background(detection, mask=mask)
    if factor == 1:
        background.subfrom(image)
    else:
        back = background.back(dtype=np.float32)
        detection -= back
        _subtract_upsampled(image, back, factor)
    sep.set_sub_object_limit(4096)
    try:
        sources = extract_sources(detection, float(parameters.get("detect_sigma", 5.0)), background.globalrms,
                                  minarea=max(1, -(-int(parameters.get("minarea", 5)) // factor ** 2)), mask=mask)
    except Exception as exc:  # noqa: BLE001 - sep raises plain Exception on buffer overflow
        log.warning("source extraction failed: %s", exc)
        sources = np.empty(0, dtype=[("x", float), ("y", float), ("flux", float), ("a", float), ("b", float),
                                     ("flag", int), ("peak", float)])
    keep = (sources["flag"] == 0) & (sources["a"] > 0) & (sources["b"] > 0)
    stars = sources[keep]
    x, y = factor * stars["x"] + (factor - 1) / 2.0, factor * stars["y"] + (factor - 1) / 2.0
    # on the full-resolution pixels: a binned block's value is no single pixel's
    peak = stars["peak"] if factor == 1 else _peaks(image, x, y, factor)
    if saturation is not None:
        level = float(parameters.get("saturation_fraction", 0.95)) * saturation - float(background.globalback)
        stars, x, y = stars[peak < level], x[peak < level], y[peak < level]
    empty = {"n_stars": int(len(stars)), "fwhm_px": None, "eccentricity": None, "star_flux": None, "stars": []}
    if len(stars) == 0:
        return empty
    order = np.argsort(stars["flux"])[::-1][:MOMENT_STARS]  # SEP's isophotal flux: which to measure
    x, y = x[order], y[order]
    # isophotal FWHM (SEP's semi-axes), where the moments' weight starts: 2.3548 sqrt((a^2 + b^2) / 2)
    rough = 2.3548 * factor * np.sqrt((stars["a"][order] ** 2 + stars["b"][order] ** 2) / 2.0)
    fwhm, axis_ratio, x, y = star_shapes(image, x, y, rough)
    real = np.isfinite(fwhm) & (fwhm >= float(parameters.get("min_fwhm_px", 1.0)))
    x, y, fwhm, axis_ratio = x[real], y[real], fwhm[real], axis_ratio[real]
    if len(x) == 0:
        return empty | {"n_stars": 0}
    flux = aperture_flux(image, x, y, APERTURE_FWHM * float(np.median(fwhm)))
    order = np.argsort(flux)[::-1]  # brightest first, by the full-resolution flux
    x, y, fwhm, axis_ratio, flux = x[order], y[order], fwhm[order], axis_ratio[order], flux[order]
    # the moments' semi-axes (px, standard deviations): sqrt(a b) = FWHM / 2.3548, b / a = axis ratio
    a = fwhm / 2.3548 / np.sqrt(axis_ratio)
    b = fwhm / 2.3548 * np.sqrt(axis_ratio)
    # shapes from isolated stars only (a neighbour within isolation_px spoils the moments)
    isolated = _isolated(x, y, float(parameters.get("isolation_px", 10.0)))
    if not isolated.any():
        isolated[:] = True
    ecc = np.sqrt(np.clip(1.0 - axis_ratio[isolated] ** 2, 0.0, 1.0))
    n_fit = int(parameters.get("fit_stars", 10))
    fitted = np.array([moffat_fwhm(image, *star) for star in zip(x[isolated][:n_fit], y[isolated][:n_fit],
                                                                  fwhm[isolated][:n_fit])])
    fitted = fitted[np.isfinite(fitted) & (fitted >= float(parameters.get("min_fwhm_px", 1.0)))]
    n_keep = int(parameters.get("max_stars", 400))
    table = np.column_stack([x, y, flux, fwhm, a, b])
    return {
        "n_stars": int(len(x)),
        "fwhm_px": float(np.median(fitted)) if fitted.size else float(np.median(fwhm[isolated])),
        "eccentricity": float(np.median(ecc)),
        "star_flux": float(np.sum(flux)),
        "stars": [[round(float(v), 3) if np.isfinite(v) else None for v in row] for row in table[:n_keep]],
    }


def aperture_flux(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """The flux of each star in a circle around its centre, the same circle for every star.

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float32, C order
        The background-subtracted full-resolution frame, ADU.
    x, y : ndarray, shape (n,)
        Centres, pixels (0-based, as SEP's).
    radius : float
        Radius of the circle, pixels (at least 1).

    Returns
    -------
    ndarray, shape (n,)
        ADU: ``sep.sum_circle`` with the exact overlap of circle and pixels (``subpix=0``;
        SExtractor's ``FLUX_APER``).
    """
    import sep

    if len(x) == 0:
        return np.empty(0)
    flux, _, _ = sep.sum_circle(image, x, y, max(float(radius), 1.0), subpix=0)
    return np.asarray(flux, dtype=float)


def _binned(image: np.ndarray, bad: np.ndarray | None, factor: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The median of each ``factor`` x ``factor`` block of ``image`` (float32, C order; a last
    partial row or column of blocks is left out) and the mask of blocks holding a bad pixel.

    The median, not the mean: a hot pixel or a cosmic-ray hit alone in its block is left out
    of the block's value, so that it makes no detection (a raw 1024 x 1024 ARCSAT frame: 32
    detections instead of 238, SEP's extraction 1.7 ms instead of 5.2), while a star, spread
    over the whole block, keeps its level. For 2 x 2 blocks it is the mean of the middle two
    of the four pixels: their sum less the largest and the smallest, halved.
    """
    ny, nx = (n - n % factor for n in image.shape)
    views = [image[i:ny:factor, j:nx:factor] for i in range(factor) for j in range(factor)]
    if factor == 2:  # strided operations: a third of the time of numpy's median over the four
        binned = views[0] + views[1]
        largest, smallest = np.maximum(views[0], views[1]), np.minimum(views[0], views[1])
        for view in views[2:]:
            binned += view
            np.maximum(largest, view, out=largest)
            np.minimum(smallest, view, out=smallest)
        binned -= largest
        binned -= smallest
        binned *= np.float32(0.5)
    else:
        binned = np.median(np.stack(views), axis=0).astype(np.float32)
    mask = None if bad is None else bad[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).any(axis=(1, 3))
    return binned, mask


def _subtract_upsampled(image: np.ndarray, level: np.ndarray, factor: int) -> None:
    """Subtract from ``image`` in place a map ``level`` of its ``factor`` x ``factor`` blocks
    (each block's value from all its pixels); a last partial row or column of blocks takes the
    map's last row or column."""
    by, bx = level.shape
    ny, nx = by * factor, bx * factor
    for i in range(factor):  # strided views: in place whatever the image's width
        for j in range(factor):
            image[i:ny:factor, j:nx:factor] -= level
    if image.shape[1] > nx:
        image[:ny, nx:] -= np.repeat(level[:, -1:], factor, axis=0)
    if image.shape[0] > ny:
        image[ny:, :] -= np.concatenate([np.repeat(level[-1], factor), np.full(image.shape[1] - nx, level[-1, -1])])


def _cutouts(image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """The boxes of ``image`` of +-``half`` px around the pixels (ix, iy), shape (n, k, k) with
    k = 2 half + 1; at the edge of the frame the box repeats the border pixels."""
    ny, nx = image.shape
    offsets = np.arange(-half, half + 1)
    rows = np.clip(iy[:, None] + offsets[None, :], 0, ny - 1)
    cols = np.clip(ix[:, None] + offsets[None, :], 0, nx - 1)
    return image[rows[:, :, None], cols[:, None, :]]


def _peaks(image: np.ndarray, x: np.ndarray, y: np.ndarray, factor: int) -> np.ndarray:
    """The largest pixel of ``image`` within ``factor`` px of each position (x, y), shape (n,)."""
    if len(x) == 0:
        return np.empty(0)
    return _cutouts(image, np.rint(x).astype(int), np.rint(y).astype(int), factor).max(axis=(1, 2))


_LN2 = float(np.log(2.0))


def _moffat(xy, amplitude, x0, y0, fwhm, u, level):
    """A circular Moffat profile by its FWHM and u = 1/beta: continuous down to the Gaussian
    (u -> 0), so that the fit needs no bounds."""
    x, y = xy
    u = abs(u) + 1e-6
    r2 = ((x - x0) ** 2 + (y - y0) ** 2) / (0.5 * fwhm) ** 2
    return amplitude * np.exp(-np.log1p(r2 * np.expm1(u * _LN2)) / u) + level


def _moffat_jacobian(xy, amplitude, x0, y0, fwhm, u, level):
    """The derivatives of :func:`_moffat` by its six parameters, one row each, shape (6, n)
    (``leastsq``'s ``col_deriv`` layout, which MINPACK takes without a transposed copy): the
    fit then evaluates the profile once per step instead of seven times (finite differences)."""
    x, y = xy
    sign = 1.0 if u >= 0 else -1.0
    u = abs(u) + 1e-6
    dx, dy = x - x0, y - y0
    h2 = (0.5 * fwhm) ** 2
    r2 = (dx ** 2 + dy ** 2) / h2
    k = np.expm1(u * _LN2)
    q = 1.0 + r2 * k
    log_q = np.log1p(r2 * k)
    g = np.exp(-log_q / u)
    d_r2 = -amplitude * (k / u) * g / q  # d f / d r2
    out = np.empty((6, x.size))
    out[0] = g
    out[1] = d_r2 * (-2.0 * dx / h2)
    out[2] = d_r2 * (-2.0 * dy / h2)
    out[3] = d_r2 * (-2.0 * r2 / fwhm)
    out[4] = sign * amplitude * g * (log_q / u ** 2 - r2 * _LN2 * (k + 1.0) / (u * q))
    out[5] = 1.0
    return out


def moffat_fwhm(image: np.ndarray, x: float, y: float, fwhm_guess: float) -> float:
    """FWHM (px) of one star from a least-squares fit of a circular Moffat profile
    I = A (1 + r^2/alpha^2)^-beta + c (Moffat 1969, A&A 3, 455), written with its FWHM
    = 2 alpha sqrt(2^(1/beta) - 1) (Trujillo et al. 2001, MNRAS 328, 977) and u = 1/beta so that
    the Gaussian is the limit u -> 0; ``scipy.optimize.leastsq`` (MINPACK's Levenberg-Marquardt,
    what ``curve_fit`` runs, called directly: without curve_fit's wrappers and covariance,
    0.1 ms less a star) with the analytic Jacobian, to a relative tolerance of 1e-5 (a FWHM of
    4 px to 0.00004 px), in a box of +-2 FWHM (at least 5 px). NaN when the fit fails, lands
    outside 0 <= u <= 1 or the star is too close to the edge."""
    from scipy.optimize import leastsq

    half = max(5, int(np.ceil(2 * fwhm_guess)))
    ix, iy = int(round(x)), int(round(y))
    ny, nx = image.shape
    if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
        return float("nan")
    cut = image[iy - half: iy + half + 1, ix - half: ix + half + 1].astype(np.float64).ravel()
    dy, dx = np.mgrid[-half: half + 1, -half: half + 1].astype(np.float64)
    xy = (dx.ravel(), dy.ravel())
    peak = float(cut.max())
    if not peak > 0 or not np.isfinite(cut).all():
        return float("nan")
    try:
        with warnings.catch_warnings():  # MINPACK's "maxfev reached" is the status checked below
            warnings.simplefilter("ignore", RuntimeWarning)
            values, status = leastsq(lambda params: _moffat(xy, *params) - cut,
                                     [peak, x - ix, y - iy, max(fwhm_guess, 1.0), 0.2, 0.0],
                                     Dfun=lambda params: _moffat_jacobian(xy, *params), col_deriv=True, maxfev=400,
                                     ftol=1e-5, xtol=1e-5)
    except (RuntimeError, ValueError):
        return float("nan")
    if status not in (1, 2, 3, 4):  # MINPACK's four kinds of convergence
        return float("nan")
    fwhm, u = abs(values[3]), abs(values[4])
    if not (values[0] > 0 and u <= 1.0 and 0.5 <= fwhm <= 2.0 * half):
        return float("nan")
    return float(fwhm)


def _isolated(x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """True for the sources with no other source closer than ``radius`` px (scipy's cKDTree)."""
    if len(x) < 2 or radius <= 0:
        return np.ones(len(x), dtype=bool)
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return distance[:, 1] >= radius


def star_shapes(image: np.ndarray, x: np.ndarray, y: np.ndarray, rough_fwhm: np.ndarray,
                iterations: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FWHM (px) and axis ratio b/a of stars from adaptive Gaussian-weighted moments.

    The second moments M of I x W, with W a round Gaussian of variance w, give the star's
    covariance C = (M^-1 - W^-1)^-1 exactly for a Gaussian star (the product of two
    Gaussians); the weight is then matched to the star (w = sqrt(det C)) and the moments taken
    again (``iterations`` times, after Bernstein & Jarvis 2002, AJ 123, 583), for all stars at
    once in boxes of one size. The profile is the one observed (pixel sampling included, as
    PSF fitters report it). FWHM = 2.3548 (det C)^(1/4), the geometric mean of the axes' FWHM.

    Returns
    -------
    fwhm, axis_ratio : ndarray, shape (n,)
        NaN where the moments are not positive definite: a hot pixel or cosmic ray (sharper
        than the sampling), a blend, noise. At the edge of the frame the box repeats the
        border pixels.
    x, y : ndarray, shape (n,)
        The stars' centres (px, 0-based): the centroids of the last weighted moments.
    """
    n = len(x)
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0)
    sigma_w = np.maximum(np.asarray(rough_fwhm, dtype=float), 1.0) / 2.3548
    half = int(min(max(np.ceil(4 * 2.0 * np.median(sigma_w)), 4), 25))
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    offsets = np.arange(-half, half + 1)
    cuts = _cutouts(image, ix, iy, half).astype(np.float64)  # (n, k, k); edges repeated
    dy0 = offsets[None, :] - (y - iy)[:, None]  # (n, k)
    dx0 = offsets[None, :] - (x - ix)[:, None]
    cx, cy = np.zeros(n), np.zeros(n)
    c11 = c22 = c12 = np.full(n, np.nan)
    valid = np.ones(n, dtype=bool)
    with np.errstate(all="ignore"):
        for _ in range(iterations):
            valid &= np.isfinite(sigma_w) & (sigma_w >= 0.3) & (sigma_w <= half / 2.0)
            w2 = np.where(valid, sigma_w, 1.0) ** 2
            dx, dy = dx0 - cx[:, None], dy0 - cy[:, None]
            # the round Gaussian weight is separable, exp(-dx^2/2w) exp(-dy^2/2w): every moment
            # sum over the box, I x W x dx^a dy^b, is (gy dy^b)^T I (gx dx^a), two matrix
            # products per star for all the moments at once
            gx = np.exp(-0.5 * dx ** 2 / w2[:, None])
            gy = np.exp(-0.5 * dy ** 2 / w2[:, None])
            px = np.stack([gx, gx * dx, gx * dx ** 2], axis=2)  # (n, k, 3)
            py = np.stack([gy, gy * dy, gy * dy ** 2], axis=2)
            sums = np.matmul(py.transpose(0, 2, 1), np.matmul(cuts, px))  # (n, 3: dy power, 3: dx power)
            total = sums[:, 0, 0]
            valid &= total > 0
            mx = sums[:, 0, 1] / total
            my = sums[:, 1, 0] / total
            m11 = sums[:, 0, 2] / total - mx ** 2
            m22 = sums[:, 2, 0] / total - my ** 2
            m12 = sums[:, 1, 1] / total - mx * my
            cx, cy = cx + np.where(valid, mx, 0.0), cy + np.where(valid, my, 0.0)
            # C = (M^-1 - I/w)^-1, with 2x2 inverses written out
            det_m = m11 * m22 - m12 ** 2
            i11, i22, i12 = m22 / det_m - 1.0 / w2, m11 / det_m - 1.0 / w2, -m12 / det_m
            det_i = i11 * i22 - i12 ** 2
            c11, c22, c12 = i22 / det_i, i11 / det_i, -i12 / det_i
            det_c = c11 * c22 - c12 ** 2
            valid &= (det_m > 0) & (c11 > 0) & (c22 > 0) & (det_c > 0)
            sigma_w = np.sqrt(np.sqrt(np.where(valid, det_c, 1.0)))
        trace = c11 + c22
        root = np.sqrt(np.maximum((c11 - c22) ** 2 / 4.0 + c12 ** 2, 0.0))
        major, minor = trace / 2.0 + root, trace / 2.0 - root
        valid &= minor > 0
        fwhm = np.where(valid, 2.3548 * (major * minor) ** 0.25, np.nan)
        ratio = np.where(valid, np.sqrt(minor / major), np.nan)
    return fwhm, ratio, x + cx, y + cy
