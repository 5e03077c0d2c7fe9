"""Where on the sky: footprints, their HEALPix index, and position filters that work on both backends.

A frame's *footprint* is the quadrilateral its four image corners make on the sky (from its
WCS, or estimated from the pointing and the plate scale). It is stored as rows:

* ``footprints``: one per frame (centre, circumscribed radius, source, the WCS it came from);
* ``footprint_corners``: four per footprint, each with the corner's unit vector and the
  vectors of the edge that starts there (below), so that the exact tests are sums of
  products of columns and bound numbers: plain SQL on SQLite and PostgreSQL alike;
* ``footprint_cells``: the HEALPix cells (order :data:`HEALPIX_ORDER`, NESTED numbering)
  that the footprint's circumscribed circle overlaps, as indexed integers.

A position query first reads the cells (the index: a superset of the answer), then keeps the
frames that pass the exact test. The geometry, for a convex footprint with corners ``c_i``
counter-clockwise seen from outside the sphere and a point ``p`` (unit vectors):

* edge ``i`` runs from ``c_i`` to ``c_{i+1}``, on the great circle of unit normal
  ``n_i = c_i x c_{i+1} / |c_i x c_{i+1}|``;
* ``p`` is inside the footprint when ``p . n_i >= 0`` for every edge;
* the great-circle distance from ``p`` to the edge is ``asin |p . n_i|`` when ``p``'s
  projection on the great circle falls between the corners, which is when
  ``p . u_i >= 0`` and ``p . w_i >= 0`` with ``u_i = n_i x c_i`` and ``w_i = c_{i+1} x n_i``;
  otherwise it is the distance to the nearer corner (``acos p . c_i``);
* a cone of radius ``r`` (0 < r < 90 deg) meets the footprint when ``p`` is inside, or a
  corner has ``p . c_i >= cos r``, or an edge has ``|p . n_i| <= sin r`` with its projection
  between the corners.

HEALPix after Gorski et al. (2005, ApJ 622, 759), through astropy-healpix. Order 6 (NSIDE 64,
49,152 cells of 0.84 deg on a side) keeps a field of 0.2 to 2 deg in a few cells.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix
from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from archive.db.base import utcnow
from archive.db.bulk import chunked, insert_rows
from archive.db.models import Footprint, FootprintCell, FootprintCorner, Frame
from archive.errors import ArchiveError

try:  # the C search under HEALPix.cone_search_lonlat (degrees in), without its three Quantities:
    # 26 instead of 72 us a cone, and ingest searches one for every light
    from astropy_healpix._core import healpix_cone_search as _cone_search
except ImportError:  # pragma: no cover - another astropy-healpix layout: its public function
    from astropy_healpix import healpix_cone_search

    def _cone_search(lon_deg: float, lat_deg: float, radius_deg: float, nside: int, order: str) -> np.ndarray:
        return healpix_cone_search(lon_deg * u.deg, lat_deg * u.deg, radius_deg * u.deg, nside, order)

#: HEALPix order of ``footprint_cells`` (NSIDE = 2**order, NESTED numbering). Changing it
#: needs the cells to be recomputed (``archive solve --reindex``).
HEALPIX_ORDER = 6


@functools.lru_cache(maxsize=32)
def healpix(order: int) -> HEALPix:
    """astropy-healpix's grid of ``order`` (NSIDE = 2**order), NESTED numbering."""
    return HEALPix(nside=2**order, order="nested")

#: Margin added to every radius handed to the HEALPix cone search (deg): the index must never
#: miss a cell that a boundary point falls into.
_MARGIN_DEG = 1e-4
#: Tolerance of the inside test (a dot product): points on an edge count as inside.
_EPSILON = 1e-12
#: A cone's cells are merged into at most this many ranges of the index (coarser cells).
MAX_RANGES = 64

#: Where a footprint came from: the header's WCS, a plate solution, or pointing and plate scale.
SOURCES = ("header", "solved", "estimated")


class SkyQueryError(ValueError, ArchiveError):
    """A position query out of range (Dec outside [-90, 90], radius not in (0, 90) deg)."""


def flush_subnormal(values: np.ndarray) -> np.ndarray:
    """``values`` with subnormal numbers (below 2.2e-308 in size) set to 0: PostgreSQL's
    ``double precision`` refuses them ("value out of range: underflow"), SQLite keeps them;
    both must store and compare the same vectors."""
    return np.where(np.abs(values) < np.finfo(np.float64).tiny, 0.0, values)


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors of positions on the sky.

    Parameters
    ----------
    ra_deg, dec_deg : float or array_like
        Right ascension and declination, deg.

    Returns
    -------
    ndarray, shape (..., 3)
        ``(cos dec cos ra, cos dec sin ra, sin dec)``, subnormal components flushed to 0
        (:func:`flush_subnormal`).
    """
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    return flush_subnormal(np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1))


def _check_position(ra_deg: float, dec_deg: float) -> None:
    if not np.isfinite(ra_deg) or not -90.0 <= dec_deg <= 90.0:
        raise SkyQueryError(f"not a position on the sky: RA {ra_deg}, Dec {dec_deg} (deg)")


@dataclass(frozen=True)
class FootprintGeometry:
    """A footprint's corners ordered counter-clockwise, its edges, centre, radius and cells.

    Attributes
    ----------
    corners : ndarray, shape (4, 2)
        RA, Dec of the corners, deg.
    vectors, normals, starts, ends : ndarray, shape (4, 3)
        Corner unit vectors ``c_i``, edge normals ``n_i``, ``u_i`` and ``w_i`` (module doc).
    centre : tuple of float
        RA, Dec of the normalized mean of the corners, deg.
    radius_deg : float
        Largest distance from the centre to a corner, deg.
    cells : ndarray of int
        HEALPix cells (order :data:`HEALPIX_ORDER`, nested) the circumscribed circle overlaps.
    """

    corners: np.ndarray
    vectors: np.ndarray
    normals: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    centre: tuple[float, float]
    radius_deg: float
    cells: np.ndarray


def footprint_geometry(corners: Sequence[tuple[float, float]]) -> FootprintGeometry:
    """The vectors and cells of a footprint given by its four corners.

    Parameters
    ----------
    corners : sequence of (ra_deg, dec_deg)
        The image corners in order around the image (either direction), deg. The
        quadrilateral must be convex and smaller than a hemisphere (any camera field is).

    Returns
    -------
    FootprintGeometry

    Raises
    ------
    SkyQueryError
        Not four distinct corners, or a corner is not a position.
    """
    geometry = footprint_geometries([corners])[0]
    if geometry is None:
        points = np.asarray(corners, float)
        if points.shape != (4, 2) or not np.all(np.isfinite(points)) or np.any(np.abs(points[:, 1]) > 90):
            raise SkyQueryError(f"a footprint needs four corners (RA, Dec in deg), got {points.tolist()}")
        raise SkyQueryError(f"a footprint needs four distinct corners, got {points.tolist()}")
    return geometry


def footprint_geometries(corner_sets: Sequence[Sequence[tuple[float, float]]]) -> list[FootprintGeometry | None]:
    """:func:`footprint_geometry` of many footprints at once (numpy over all of them: a batch of
    ingest's lights costs a tenth of one call each).

    Parameters
    ----------
    corner_sets : sequence of corners
        Each as for :func:`footprint_geometry`.

    Returns
    -------
    list of FootprintGeometry or None
        In order; None for a set that :func:`footprint_geometry` refuses (not four distinct
        positions).
    """
    out: list[FootprintGeometry | None] = [None] * len(corner_sets)
    good, sets = [], []
    for i, corners in enumerate(corner_sets):
        points = np.asarray(corners, float)
        if points.shape == (4, 2) and np.all(np.isfinite(points)) and not np.any(np.abs(points[:, 1]) > 90):
            good.append(i)
            sets.append(points)
    if not good:
        return out
    points = np.stack(sets)  # (n, 4, 2)
    vectors = unit_vectors(points[..., 0], points[..., 1])  # (n, 4, 3)
    mean = vectors.sum(axis=1)
    centre_vectors = mean / np.linalg.norm(mean, axis=1)[:, None]
    clockwise = np.einsum("ij,ij->i", np.cross(vectors[:, 0], vectors[:, 1]), centre_vectors) < 0
    points[clockwise] = points[clockwise, ::-1]  # clockwise: reverse the order
    vectors[clockwise] = vectors[clockwise, ::-1]
    following = np.roll(vectors, -1, axis=1)
    cross = np.cross(vectors, following)
    lengths = np.linalg.norm(cross, axis=2)
    distinct = np.all(lengths >= 1e-12, axis=1)
    normals = flush_subnormal(cross / np.where(lengths > 0, lengths, 1.0)[..., None])
    starts = flush_subnormal(np.cross(normals, vectors))
    ends = flush_subnormal(np.cross(following, normals))
    points = flush_subnormal(points)
    centre_ra = np.degrees(np.arctan2(centre_vectors[:, 1], centre_vectors[:, 0])) % 360.0
    centre_dec = np.degrees(np.arcsin(np.clip(centre_vectors[:, 2], -1, 1)))
    radii = np.degrees(np.arccos(np.clip(np.einsum("nij,nj->ni", vectors, centre_vectors), -1, 1))).max(axis=1)
    for k, i in enumerate(good):
        if distinct[k]:
            centre = (float(centre_ra[k]), float(centre_dec[k]))
            out[i] = FootprintGeometry(points[k], vectors[k], normals[k], starts[k], ends[k], centre, float(radii[k]),
                                       cone_cells(*centre, float(radii[k])))
    return out


def cone_cells(ra_deg: float, dec_deg: float, radius_deg: float, order: int = HEALPIX_ORDER) -> np.ndarray:
    """HEALPix cells (nested, ``order``) overlapping a cone, sorted.

    Parameters
    ----------
    ra_deg, dec_deg, radius_deg : float
        Centre and radius of the cone, deg (a small margin is added).
    order : int
        HEALPix order (default the index's, :data:`HEALPIX_ORDER`).
    """
    cells = _cone_search(float(ra_deg), float(dec_deg), float(radius_deg) + _MARGIN_DEG, 2**order, "nested")
    return np.unique(np.asarray(cells, dtype=np.int64))


def point_cell(ra_deg: float, dec_deg: float, order: int = HEALPIX_ORDER) -> int:
    """The HEALPix cell (nested, ``order``) holding a position."""
    return int(healpix(order).lonlat_to_healpix(ra_deg * u.deg, dec_deg * u.deg))


def cell_ranges(ra_deg: float, dec_deg: float, radius_deg: float) -> list[tuple[int, int]]:
    """Ranges ``[low, high]`` of index cells (order :data:`HEALPIX_ORDER`) covering a cone.

    The cone's cells are looked up at the finest order that needs at most
    :data:`MAX_RANGES` of them; a nested cell of order ``k`` is the range of its
    ``4**(HEALPIX_ORDER - k)`` descendants, and touching ranges are merged.
    """
    for order in range(HEALPIX_ORDER, -1, -1):
        cells = cone_cells(ra_deg, dec_deg, radius_deg, order)
        if len(cells) <= MAX_RANGES or order == 0:
            break
    shift = 2 * (HEALPIX_ORDER - order)
    ranges: list[list[int]] = []
    for cell in cells.tolist():
        low, high = cell << shift, ((cell + 1) << shift) - 1
        if ranges and ranges[-1][1] + 1 == low:
            ranges[-1][1] = high
        else:
            ranges.append([low, high])
    return [(low, high) for low, high in ranges]


# -- writing ------------------------------------------------------------------------------------


def corner_rows(frame_id: int, geometry: FootprintGeometry) -> list[tuple]:
    """The four ``footprint_corners`` rows of a footprint, as tuples in the table's column order
    (frame, corner, RA, Dec, then the corner, normal, start and end vectors: x, y, z each)."""
    columns = np.hstack([geometry.corners, geometry.vectors, geometry.normals, geometry.starts, geometry.ends])
    return [(frame_id, i, *row) for i, row in enumerate(columns.tolist())]


def store_footprints(session: Session, footprints: Sequence[dict], *, replace: bool = True) -> int:
    """Write footprints, replacing any a frame had.

    Parameters
    ----------
    session : Session
        Written to and flushed; the caller commits.
    footprints : sequence of dict
        Each with ``frame_id``, ``corners`` (four (RA, Dec), deg), ``source`` (one of
        :data:`SOURCES`) and optionally ``pixel_scale_arcsec``, ``wcs_header`` (the WCS as
        header cards), ``reduction_id`` (the solve that made it) and ``geometry`` (its
        :func:`footprint_geometry`, when already computed).
    replace : bool
        Delete the frames' footprints first (False when they have none: frames just
        catalogued).

    Returns
    -------
    int
        Footprints written.
    """
    if not footprints:
        return 0
    frame_ids = [f["frame_id"] for f in footprints] if replace else []
    for batch in chunked(frame_ids):
        session.execute(delete(FootprintCell).where(FootprintCell.frame_id.in_(batch)))
        session.execute(delete(FootprintCorner).where(FootprintCorner.frame_id.in_(batch)))
        session.execute(delete(Footprint).where(Footprint.frame_id.in_(batch)))
    now = utcnow()
    heads, corners, cells = [], [], []
    missing = [item for item in footprints if item.get("geometry") is None]
    computed = {id(item): geometry for item, geometry in zip(missing, footprint_geometries([m["corners"] for m in missing]))}
    for item in footprints:
        if item["source"] not in SOURCES:
            raise ValueError(f"footprint source must be one of {SOURCES}, not {item['source']!r}")
        geometry = item.get("geometry") or computed[id(item)] or footprint_geometry(item["corners"])  # raises
        heads.append({
            "frame_id": item["frame_id"], "source": item["source"], "ra_deg": geometry.centre[0],
            "dec_deg": geometry.centre[1], "radius_deg": geometry.radius_deg,
            "pixel_scale_arcsec": item.get("pixel_scale_arcsec"), "healpix_order": HEALPIX_ORDER,
            "wcs_header": item.get("wcs_header"), "reduction_id": item.get("reduction_id"), "created_at": now,
        })
        corners += corner_rows(item["frame_id"], geometry)
        cells += [(cell, item["frame_id"]) for cell in geometry.cells.tolist()]
    session.execute(Footprint.__table__.insert(), heads)
    # four corners and a few cells a frame, plain numbers: straight to the driver (an ingest
    # writes them for every light, and SQLAlchemy's handling of each row cost more than the row)
    connection = session.connection()
    insert_rows(connection, FootprintCorner.__table__, corners)
    insert_rows(connection, FootprintCell.__table__, cells)
    session.flush()
    return len(heads)


# -- position filters (SQL) ---------------------------------------------------------------------


def _dot(prefix: str, p: np.ndarray) -> ColumnElement:
    """``column(prefix x) * p_x + ...`` over a ``footprint_corners`` vector."""
    t = FootprintCorner.__table__.c
    names = {"c": ("x", "y", "z")}.get(prefix, (f"{prefix}x", f"{prefix}y", f"{prefix}z"))
    return t[names[0]] * float(p[0]) + t[names[1]] * float(p[1]) + t[names[2]] * float(p[2])


def _passing(ranges: Sequence[tuple[int, int]], test: ColumnElement) -> ColumnElement:
    """``frames.id`` among the frames of some index cells (the index step) whose four corner
    rows pass ``test``, an aggregate over them (the exact step).

    One read of the candidates' corner rows, grouped by frame: the candidates come from the
    cells' primary key, their corners from ``footprint_corners``' (``frame_id`` first).
    """
    cell = FootprintCell.__table__.c.cell
    corner = FootprintCorner.__table__.c
    terms = [cell == low if low == high else cell.between(low, high) for low, high in ranges]
    candidates = select(FootprintCell.frame_id).where(or_(*terms))
    passing = select(corner.frame_id).where(corner.frame_id.in_(candidates)).group_by(corner.frame_id).having(test)
    return Frame.id.in_(passing)


def _inside(p: np.ndarray) -> ColumnElement:
    """The exact test, over a footprint's corner rows: it contains the unit vector ``p``
    (``p`` is on the inner side of every edge)."""
    return func.min(_dot("n", p)) >= -_EPSILON


def covers_condition(ra_deg: float, dec_deg: float) -> ColumnElement:
    """A condition on ``frames``: the footprint contains the position.

    Parameters
    ----------
    ra_deg, dec_deg : float
        The position, deg (ICRS as the WCS gives it).

    Raises
    ------
    SkyQueryError
        Dec outside [-90, 90] or RA not finite.
    """
    _check_position(ra_deg, dec_deg)
    cell = point_cell(ra_deg, dec_deg)
    return _passing([(cell, cell)], _inside(unit_vectors(ra_deg, dec_deg)))


def cone_condition(ra_deg: float, dec_deg: float, radius_deg: float) -> ColumnElement:
    """A condition on ``frames``: the footprint comes within ``radius_deg`` of the position.

    The great-circle distance from the position to the footprint (0 inside it) is at most
    the radius: the footprint overlaps the cone.

    Parameters
    ----------
    ra_deg, dec_deg, radius_deg : float
        Centre and radius of the cone, deg; 0 < radius < 90.

    Raises
    ------
    SkyQueryError
        A position off the sky, or a radius outside (0, 90) deg.
    """
    _check_position(ra_deg, dec_deg)
    if not 0.0 < radius_deg < 90.0:
        raise SkyQueryError(f"a cone radius must lie in (0, 90) deg, not {radius_deg}")
    p = unit_vectors(ra_deg, dec_deg)
    r = np.radians(radius_deg)
    normal = _dot("n", p)
    near = or_(  # a corner within the radius, or an edge within it between its corners
        _dot("c", p) >= float(np.cos(r)),
        and_(normal <= float(np.sin(r)), normal >= -float(np.sin(r)), _dot("u", p) >= 0, _dot("w", p) >= 0),
    )
    return _passing(cell_ranges(ra_deg, dec_deg, radius_deg), or_(_inside(p), func.max(case((near, 1), else_=0)) == 1))


def has_wcs_condition() -> ColumnElement:
    """A condition on ``frames``: the frame has a footprint from a WCS (header or solved)."""
    return select(Footprint.frame_id).where(
        Footprint.frame_id == Frame.id, Footprint.source.in_(("header", "solved"))).correlate(Frame).exists()


def footprint_table(session: Session, frame_ids: Sequence[int]) -> dict[int, Footprint]:
    """frame id -> its :class:`Footprint` row, for the frames that have one."""
    out: dict[int, Footprint] = {}
    for batch in chunked(sorted(set(frame_ids))):
        out.update((f.frame_id, f) for f in session.scalars(select(Footprint).where(Footprint.frame_id.in_(batch))))
    return out


def footprint_corners(session: Session, frame_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """frame id -> its corners, shape (4, 2) (RA, Dec in deg, counter-clockwise)."""
    out: dict[int, list] = {}
    t = FootprintCorner.__table__.c
    for batch in chunked(sorted(set(frame_ids))):
        rows = session.execute(select(t.frame_id, t.corner, t.ra_deg, t.dec_deg).where(t.frame_id.in_(batch))
                               .order_by(t.frame_id, t.corner))
        for frame_id, _corner, ra, dec in rows:
            out.setdefault(frame_id, []).append((ra, dec))
    return {k: np.asarray(v, float) for k, v in out.items()}


__all__ = [
    "HEALPIX_ORDER", "MAX_RANGES", "SOURCES", "FootprintGeometry", "SkyQueryError", "cell_ranges",
    "cone_cells", "cone_condition", "corner_rows", "covers_condition", "footprint_corners",
    "footprint_geometries", "footprint_geometry", "footprint_table", "has_wcs_condition", "point_cell", "store_footprints",
    "unit_vectors",
]
