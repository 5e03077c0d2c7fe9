"""Footprints at ingest: from the header's WCS, else estimated from pointing and plate scale.

A light whose header carries a celestial WCS (PinPoint, astrometry.net, Siril and N.I.N.A.
write one; astropy.wcs reads it) gets the footprint of its image corners, source ``header``.
One without a WCS but with pointing RA/Dec, focal length and pixel size gets an *estimated*
footprint (source ``estimated``): a gnomonic (TAN) projection centred on the pointing with the
plate scale ``206.265 * pixel size [um] / focal length [mm]`` arcsec per pixel, north up (the
camera's rotation is unknown). ``archive solve`` replaces estimates with plate solutions
(:mod:`archive.reduce.solve`). The keywords of the plate scale are data (``configs/sky.toml``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning, Wcsprm
from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, frame_query
from archive.db.models import Footprint, Frame
from archive.db.sky import SkyQueryError, footprint_geometries, store_footprints
from archive.fitsio import WCS_KEYWORD
from archive.ingest.sky_config import SkyConfig, load_sky_config

log = logging.getLogger(__name__)

#: arcsec per radian / 1000: plate scale in arcsec/pixel = this * pixel size (um) / focal length (mm).
ARCSEC_PER_UM_PER_MM = 206.264806


#: Besides the WCS keywords (:data:`archive.fitsio.WCS_KEYWORD`), what wcslib reads with them:
#: the equinox's old name, the date of the coordinates and the axis counts.
_WITH_WCS = frozenset({"EPOCH", "MJD-OBS", "DATE-OBS", "NAXIS", "NAXIS1", "NAXIS2"})


#: Lines that may be WCS cards (:func:`_wcs_card` decides): a prefilter, as one regular
#: expression over the whole header is quicker than a test of each of its hundred lines.
_WCS_LINE = re.compile(r"^ *(?:WCSAXES|CTYPE|CRVAL|CRPIX|CDELT|CROTA|CUNIT|CD\d|PC\d|PV\d|LONPOLE|LATPOLE|RADE|EQUINOX|"
                       r"[AB]P?_|EPOCH|MJD-OBS|DATE-OBS|NAXIS)[^\n]*", re.MULTILINE)


def _wcs_card(key: str) -> bool:
    return key in _WITH_WCS or WCS_KEYWORD.match(key) is not None


def parse_header(text: str, keywords: Iterable[str] = ()) -> fits.Header:
    """A header stored in the catalogue (80-character cards joined by newlines) as astropy's,
    reduced to its WCS cards and ``keywords``: a WCS parsed from 20 cards instead of the
    hundred or so of a capture program's header (ingest of 2,000 lights: 6 s -> well under 1 s)."""
    wanted = set(keywords)
    lines = [line for line in text.split("\n")
             if (key := line[:8].strip()) and (key in wanted or _wcs_card(key))]
    return fits.Header.fromstring("\n".join(lines), sep="\n")


def celestial_wcs(header: fits.Header | str) -> WCS | None:
    """The header's celestial WCS, or None when it has none (or astropy cannot read it).

    ``header`` is an astropy header, or the header as FITS text (80-character cards), which
    wcslib parses directly (no astropy header to build and verify: ingest's hot path)."""
    if isinstance(header, str):
        keys = {header[i:i + 8].strip() for i in range(0, len(header), 80)}
        if "CTYPE1" not in keys or "CTYPE2" not in keys:
            return None
    elif "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():  # header oddities are ingest's to report, not WCS's
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header, naxis=2, relax=True)
        except Exception as exc:  # noqa: BLE001 - wcslib raises many kinds; a bad WCS is no WCS
            log.debug("unreadable WCS: %s", exc)
            return None
    return wcs if wcs.has_celestial and wcs.wcs.lngtyp == "RA" else None


def wcs_footprint(wcs: WCS, naxis1: int, naxis2: int) -> dict[str, Any]:
    """Corners (RA, Dec, deg) of an image of ``naxis1 x naxis2`` pixels through ``wcs``.

    Returns
    -------
    dict
        ``corners`` (4, 2) and ``pixel_scale_arcsec`` (geometric mean of the two axes).
    """
    corners = wcs.calc_footprint(axes=(naxis1, naxis2))
    scales = wcs.proj_plane_pixel_scales()  # ``wcs`` is celestial (celestial_wcs): no copy needed
    scale = float(np.sqrt(abs(scales[0].to_value("arcsec") * scales[1].to_value("arcsec"))))
    return {"corners": corners, "pixel_scale_arcsec": scale}


#: Keywords of what astropy.wcs.WCS adds to wcslib's core WCS: SIP distortions, and PV cards
#: (which it may take for SCAMP's TPV distortion).
_DISTORTION = re.compile(r"^([AB]P?_\d|[AB]P?_ORDER|PV\d)")
_DISTORTED = object()


def _plain_wcs_footprint(cards: str, naxis1: int, naxis2: int) -> dict[str, Any] | None | object:
    """:func:`wcs_footprint` of ``celestial_wcs(cards)`` computed by wcslib alone (astropy's
    :class:`~astropy.wcs.Wcsprm`): the same corners and scale in a tenth of the time, as
    :class:`~astropy.wcs.WCS` parses and re-serializes the header twice to look for
    distortions. Returns :data:`_DISTORTED` when the cards have distortion keywords (the
    caller then uses :class:`~astropy.wcs.WCS`), None when they hold no celestial WCS.

    ``cards`` are 80-character cards, concatenated.
    """
    keys = {cards[i:i + 8].strip() for i in range(0, len(cards), 80)}
    if "CTYPE1" not in keys or "CTYPE2" not in keys:
        return None
    if any(_DISTORTION.match(key) for key in keys):
        return _DISTORTED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = Wcsprm(header=cards.encode("ascii"), relax=True, warnings=False)
            if wcs.naxis != 2:
                wcs = wcs.sub(2)
            wcs.fix()  # as astropy.wcs.WCS does
            wcs.set()
            if wcs.lng < 0 or wcs.lat < 0 or wcs.lngtyp != "RA":
                return None
            pixels = np.array([[1, 1], [1, naxis2], [naxis1, naxis2], [naxis1, 1]], dtype=float)  # WCS.calc_footprint
            corners = wcs.p2s(pixels, 1)["world"]
            matrix = np.diag(wcs.get_cdelt()) @ wcs.get_pc()  # WCS.pixel_scale_matrix, deg (wcslib's celestial unit)
    except Exception as exc:  # noqa: BLE001 - wcslib raises many kinds; a bad WCS is no WCS
        log.debug("unreadable WCS: %s", exc)
        return None
    scales = np.sqrt((matrix**2).sum(axis=0)) * 3600.0  # WCS.proj_plane_pixel_scales, arcsec
    return {"corners": corners, "pixel_scale_arcsec": float(np.sqrt(abs(scales[0] * scales[1])))}


def _first(header: fits.Header, names: Iterable[str]) -> float | None:
    for name in names:
        value = header.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0:
            return float(value)
    return None


def plate_scale(header: fits.Header, binning: int | None, config: SkyConfig) -> float | None:
    """Plate scale (arcsec/pixel) from focal length and pixel size, or None when unknown.

    ``206.265 * pixel size [um] / focal length [mm]`` (small-angle approximation), the pixel
    size along x, multiplied by the binning when the keyword does not include it.
    """
    focal = _first(header, config.focal_length)
    pixel = _first(header, config.pixel_size_x)
    if focal is None or pixel is None:
        return None
    if not config.pixel_size_includes_binning and binning:
        pixel *= binning
    return ARCSEC_PER_UM_PER_MM * pixel / focal


def estimated_footprint(ra_deg: float, dec_deg: float, naxis1: int, naxis2: int, scale_arcsec: float) -> dict[str, Any]:
    """Corners of a field centred on the pointing, north up, ``scale_arcsec`` per pixel.

    A TAN projection (astropy.wcs) with the reference pixel at the image centre.
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra_deg, dec_deg]
    wcs.wcs.crpix = [(naxis1 + 1) / 2.0, (naxis2 + 1) / 2.0]
    wcs.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    return {"corners": wcs.calc_footprint(axes=(naxis1, naxis2)), "pixel_scale_arcsec": scale_arcsec}


def frame_footprint(frame: Mapping[str, Any], config: SkyConfig) -> dict[str, Any] | None:
    """The footprint of a frame: from its header's WCS, else estimated, else None.

    Parameters
    ----------
    frame : mapping
        ``header`` (stored header text), ``naxis1``, ``naxis2``, ``ra_deg``, ``dec_deg``,
        ``binning_x``, ``image_type``.
    config : SkyConfig

    Returns
    -------
    dict or None
        ``corners``, ``pixel_scale_arcsec``, ``source`` and, from a header, ``wcs_header``.
    """
    if frame.get("image_type") not in config.image_types or not frame.get("naxis1") or not frame.get("naxis2"):
        return None
    cards = [line for line in _WCS_LINE.findall(frame["header"]) if (key := line[:8].strip()) and _wcs_card(key)]
    text = "".join(card[:80].ljust(80) for card in cards)
    out = _plain_wcs_footprint(text, frame["naxis1"], frame["naxis2"])
    if out is _DISTORTED:
        wcs = celestial_wcs(text)
        out = None
        if wcs is not None:
            try:
                out = wcs_footprint(wcs, frame["naxis1"], frame["naxis2"])
            except Exception as exc:  # noqa: BLE001 - a WCS that cannot project its corners is no WCS
                log.debug("WCS corners not computed: %s", exc)
    if out is not None and np.all(np.isfinite(out["corners"])):
        # the header's own WCS cards, as read (a new header from wcs.to_header costs as much again)
        return {**out, "source": "header", "wcs_header": "\n".join(cards)}
    ra, dec = frame.get("ra_deg"), frame.get("dec_deg")
    if ra is None or dec is None:
        return None
    try:
        header = parse_header(frame["header"], (*config.focal_length, *config.pixel_size_x, *config.pixel_size_y))
    except (ValueError, KeyError) as exc:
        log.debug("header not parsed: %s", exc)
        return None
    scale = plate_scale(header, frame.get("binning_x"), config)
    if ra is None or dec is None or scale is None or not -90 <= dec <= 90:
        return None
    return {**estimated_footprint(ra, dec, frame["naxis1"], frame["naxis2"], scale), "source": "estimated"}


def read_footprints(frames: Sequence[Mapping[str, Any]], config: SkyConfig | None = None) -> list[dict[str, Any] | None]:
    """:func:`frame_footprint` of each frame, with its geometry
    (:func:`archive.db.sky.footprint_geometries`, all at once), ready for
    :func:`archive.db.sky.store_footprints`: ingest computes them while reading, in its worker
    processes, so that the writes (one batch at a time) only insert rows.

    Parameters
    ----------
    frames : sequence of mapping
        As for :func:`frame_footprint`.
    config : SkyConfig, optional
        Default: the bundled ``configs/sky.toml`` (as :func:`index_frames`).

    Returns
    -------
    list of dict or None
        As :func:`frame_footprint`, plus ``geometry`` unless the corners are degenerate (the
        store then refuses it, as it would have).
    """
    config = config or load_sky_config()
    footprints = [frame_footprint(frame, config) for frame in frames]
    found = [footprint for footprint in footprints if footprint is not None]
    for footprint, geometry in zip(found, footprint_geometries([f["corners"] for f in found])):
        if geometry is not None:
            footprint["geometry"] = geometry
    return footprints


def index_frames(session: Session, frames: Iterable[tuple[int, Mapping[str, Any]]], config: SkyConfig | None = None,
                 *, replace: bool = True) -> int:
    """Compute and store the footprints of frames (replacing theirs).

    Parameters
    ----------
    session : Session
        Written to; the caller commits.
    frames : iterable of (frame id, mapping)
        The mapping as for :func:`frame_footprint`, or with the ``footprint`` already
        computed (:func:`read_footprints`; None for none).
    config : SkyConfig, optional
        Default: the bundled ``configs/sky.toml``.
    replace : bool
        Whether the frames may have footprints already (False for frames just catalogued:
        nothing to delete first).

    Returns
    -------
    int
        Footprints stored.
    """
    config = config or load_sky_config()
    rows = []
    for frame_id, frame in frames:
        footprint = frame["footprint"] if "footprint" in frame else frame_footprint(frame, config)
        if footprint is not None:
            rows.append({"frame_id": frame_id, **footprint})
    try:
        return store_footprints(session, rows, replace=replace)
    except SkyQueryError as exc:  # a degenerate WCS (all corners at one point): store one by one
        log.debug("footprints stored one by one: %s", exc)
        stored = 0
        for row in rows:
            try:
                stored += store_footprints(session, [row], replace=replace)
            except SkyQueryError:
                log.info("frame %s: degenerate footprint, not indexed", row["frame_id"])
        return stored


_FRAME_COLUMNS = (Frame.id, Frame.header, Frame.naxis1, Frame.naxis2, Frame.ra_deg, Frame.dec_deg, Frame.binning_x,
                  Frame.image_type)


def index_missing(session: Session, filters: FrameFilter | None = None, config: SkyConfig | None = None) -> int:
    """Footprints for catalogued frames (matching ``filters``) that have none: a catalogue made
    before footprints existed, or frames whose type was not indexed before.

    Returns
    -------
    int
        Footprints stored.
    """
    config = config or load_sky_config()
    query = frame_query(filters, Frame.id).where(
        Frame.image_type.in_(config.image_types), ~select(Footprint.frame_id).where(Footprint.frame_id == Frame.id).exists())
    ids = list(session.scalars(query.order_by(Frame.id)))
    stored = 0
    for batch in chunked(ids, 500):
        rows = session.execute(select(*_FRAME_COLUMNS).where(Frame.id.in_(batch))).mappings().all()
        stored += index_frames(session, [(row["id"], row) for row in rows], config)
    return stored


__all__ = ["SkyConfig", "estimated_footprint", "frame_footprint", "index_frames", "index_missing", "load_sky_config",
           "plate_scale", "read_footprints", "wcs_footprint", "celestial_wcs", "parse_header"]
