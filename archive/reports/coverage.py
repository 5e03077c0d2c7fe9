"""Coverage: integration per sky cell, drawn as a map, and "have I imaged this position".

Integration is counted once per exposure (duplicates of an exposure are left out; raw lights
unless another image type is asked for) from the
frames' footprints (:mod:`archive.db.sky`): a frame adds its exposure time to every HEALPix
cell of the map whose centre lies inside its footprint, or, for a footprint smaller than a
cell, to the cell of its centre. The map's order is chosen from the footprints' size (about
four cells across a field) unless given.
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
from astropy_healpix import HEALPix
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive.db.frames import FrameFilter, frame_query
from archive.db.models import Footprint, FootprintCorner, Frame
from archive.db.sky import cone_cells, point_cell, unit_vectors

#: Orders a coverage map may use (NSIDE 2**order): 3 (7.3 deg cells) to 13 (26 arcsec).
MIN_ORDER, MAX_ORDER = 3, 13

_COLUMNS = ["filter_name", "cell", "ra_deg", "dec_deg", "frames", "integration_s"]


def _no_duplicates(filters: FrameFilter | None) -> FrameFilter:
    """The filters without duplicate exposures, and of raw lights unless a type is given (a
    light and its calibrated product are one exposure)."""
    f = filters or FrameFilter()
    return FrameFilter(**{**f.__dict__, "include_duplicates": False, "image_type": f.image_type or "light"})


def auto_order(radius_deg: float) -> int:
    """The HEALPix order whose cells are about a quarter of a field of circumscribed radius ``radius_deg``."""
    for order in range(MIN_ORDER, MAX_ORDER + 1):
        side = HEALPix(nside=2**order).pixel_resolution.to_value(u.deg)
        if side <= radius_deg / 2.0:
            return order
    return MAX_ORDER


def coverage_table(session: Session, filters: FrameFilter | None = None, *, order: int | None = None,
                   by_filter: bool = False) -> tuple[pd.DataFrame, int]:
    """Integration per HEALPix cell (nested) of the frames matching ``filters``.

    Parameters
    ----------
    session : Session
    filters : FrameFilter, optional
        Which frames (duplicates of an exposure are always left out; the image type defaults
        to ``light``).
    order : int, optional
        HEALPix order of the map (default from the median footprint size).
    by_filter : bool
        One set of cells per filter (``filter_name`` column), else all filters together
        (``filter_name`` empty).

    Returns
    -------
    (DataFrame, int)
        Columns ``filter_name, cell, ra_deg, dec_deg`` (cell centre), ``frames``,
        ``integration_s``; and the order used.
    """
    f = _no_duplicates(filters)
    frames = session.execute(
        frame_query(f, Frame.id, Frame.filter_name, Frame.exposure_time_s, Footprint.ra_deg, Footprint.dec_deg,
                    Footprint.radius_deg).join(Footprint, Footprint.frame_id == Frame.id).order_by(Frame.id)
    ).all()
    if not frames:
        return pd.DataFrame(columns=_COLUMNS), order or MIN_ORDER
    if order is None:
        order = auto_order(float(np.median([r.radius_deg for r in frames])))
    normals: dict[int, list] = {}
    t = FootprintCorner.__table__.c
    ids = [r.id for r in frames]
    for start in range(0, len(ids), 5000):
        for frame_id, nx, ny, nz in session.execute(select(t.frame_id, t.nx, t.ny, t.nz).where(
                t.frame_id.in_(ids[start:start + 5000]))):
            normals.setdefault(frame_id, []).append((nx, ny, nz))
    healpix = HEALPix(nside=2**order, order="nested")
    totals: dict[tuple[str, int], list[float]] = {}
    for row in frames:
        cells = cone_cells(row.ra_deg, row.dec_deg, row.radius_deg, order)
        lon, lat = healpix.healpix_to_lonlat(cells)
        centres = unit_vectors(lon.to_value(u.deg), lat.to_value(u.deg))
        inside = np.all(centres @ np.asarray(normals[row.id]).T >= -1e-12, axis=1)
        hits = cells[inside] if inside.any() else np.array([point_cell(row.ra_deg, row.dec_deg, order)])
        key = (row.filter_name or "") if by_filter else ""
        for cell in hits.tolist():
            entry = totals.setdefault((key, cell), [0, 0.0])
            entry[0] += 1
            entry[1] += row.exposure_time_s or 0.0
    cells = np.array([cell for _, cell in totals], dtype=np.int64)
    lon, lat = healpix.healpix_to_lonlat(cells)
    table = pd.DataFrame({
        "filter_name": [k for k, _ in totals], "cell": cells, "ra_deg": lon.to_value(u.deg),
        "dec_deg": lat.to_value(u.deg), "frames": [v[0] for v in totals.values()],
        "integration_s": [v[1] for v in totals.values()],
    })
    return table.sort_values(["filter_name", "cell"], ignore_index=True), order


def draw_coverage(table: pd.DataFrame, order: int, path: str | Path, *, title: str = "Coverage") -> Path:
    """Draw integration per cell (hours) as a PNG, one panel per filter.

    RA increases to the left; a map crossing RA 0 is drawn around its middle. Uses
    matplotlib's Agg backend (no display needed).

    Parameters
    ----------
    table : DataFrame
        From :func:`coverage_table`.
    order : int
        Its HEALPix order.
    path : str or Path
        The PNG to write (its folder must exist).

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    path = Path(path)
    groups = [(name, part) for name, part in table.groupby("filter_name", sort=True)] or [("", table)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups) + 1, 5), squeeze=False)
    norm = Normalize(vmin=0, vmax=max(float(table["integration_s"].max() / 3600.0), 1e-9) if len(table) else 1)
    healpix = HEALPix(nside=2**order, order="nested")
    mappable = None
    for ax, (name, part) in zip(axes[0], groups):
        if len(part):
            lon, lat = healpix.boundaries_lonlat(part["cell"].to_numpy(), step=2)
            ra, dec = lon.to_value(u.deg), lat.to_value(u.deg)
            middle = float(np.degrees(np.angle(np.exp(1j * np.radians(part["ra_deg"])).mean()))) % 360.0
            ra = (ra - middle + 180.0) % 360.0 - 180.0 + middle  # continuous around the map's middle
            for i in range(len(ra)):  # one cell straddling the wrap: bring its corners together
                ra[i] = np.where(ra[i] - ra[i][0] > 180, ra[i] - 360, np.where(ra[i][0] - ra[i] > 180, ra[i] + 360, ra[i]))
            polygons = [np.column_stack([r, d]) for r, d in zip(ra, dec)]
            collection = PolyCollection(polygons, array=part["integration_s"].to_numpy() / 3600.0, cmap="viridis",
                                        norm=norm, edgecolors="face")
            ax.add_collection(collection)
            mappable = collection
            margin = healpix.pixel_resolution.to_value(u.deg)
            ax.set_xlim(ra.max() + margin, ra.min() - margin)
            ax.set_ylim(dec.min() - margin, dec.max() + margin)
            ax.set_aspect(1.0 / max(np.cos(np.radians(float(part["dec_deg"].mean()))), 0.05))
        ax.set_title(f"{title}: {name}" if name else title)
        ax.set_xlabel("RA (deg)")
        ax.set_ylabel("Dec (deg)")
        ax.grid(True, alpha=0.3)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[0].tolist(), label="integration (h)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def imaged_at(session: Session, ra_deg: float, dec_deg: float, filters: FrameFilter | None = None) -> pd.DataFrame:
    """Have I imaged this position: the frames whose footprint contains it, per filter.

    Returns
    -------
    DataFrame
        ``filter_name, frames, nights, integration_h, first, last`` (DATE-OBS, UTC), one row
        per filter; empty when no footprint contains the position.
    """
    f = _no_duplicates(filters)
    f = FrameFilter(**{**f.__dict__, "covers": (ra_deg, dec_deg)})
    query = frame_query(f, Frame.filter_name, func.count(Frame.id), func.count(func.distinct(Frame.night)),
                        func.sum(Frame.exposure_time_s), func.min(Frame.date_obs), func.max(Frame.date_obs))
    rows = session.execute(query.group_by(Frame.filter_name).order_by(Frame.filter_name)).all()
    return pd.DataFrame(
        [(name, n, nights, (total or 0.0) / 3600.0, first, last) for name, n, nights, total, first, last in rows],
        columns=["filter_name", "frames", "nights", "integration_h", "first", "last"],
    )
