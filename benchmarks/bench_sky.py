"""Benchmark: cone and covers queries over 1,000,000 synthetic footprints, SQLite and PostgreSQL.

The footprints are SYNTHETIC: centres uniform on the sphere, fields of 0.2 to 1.5 deg by half
to all of that, rotated at random; their corners are the gnomonic deprojection of the field's
corners, their rows (``footprints``, ``footprint_corners``, ``footprint_cells``) the ones
:func:`archive.db.sky.store_footprints` writes (checked on a sample), bulk-loaded (``COPY`` on
PostgreSQL). Each query is ``frame_query(FrameFilter(cone=...) or FrameFilter(covers=...),
Frame.id)`` executed through a session, as the CLI does: half at random positions, half at the
centre of a random footprint (so that most of those find frames). Printed: median and 95th
percentile per backend and kind (target: p95 under 50 ms).

PostgreSQL: a scratch database on ``ARCHIVE_TEST_PG_URL`` (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards.

    python benchmarks/bench_sky.py             # 1,000,000 footprints
    python benchmarks/bench_sky.py --n 20000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PG_ADMIN_URL = os.environ.get("ARCHIVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CHUNK = 100_000


def synthetic_corners(n: int, seed: int = 14) -> np.ndarray:
    """Corners (n, 4, 3) as unit vectors of ``n`` random rotated fields (gnomonic deprojection)."""
    rng = np.random.default_rng(seed)
    ra = np.radians(rng.uniform(0, 360, n))
    dec = np.arcsin(rng.uniform(-1, 1, n))
    width = np.radians(rng.uniform(0.2, 1.5, n))
    height = width * rng.uniform(0.5, 1.0, n)
    theta = np.radians(rng.uniform(0, 180, n))
    centre = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)
    east = np.stack([-np.sin(ra), np.cos(ra), np.zeros(n)], axis=-1)
    north = np.stack([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)], axis=-1)
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = sx * width / 2, sy * height / 2
        xi = x * np.cos(theta) - y * np.sin(theta)
        eta = x * np.sin(theta) + y * np.cos(theta)
        v = centre + xi[:, None] * east + eta[:, None] * north
        corners.append(v / np.linalg.norm(v, axis=1)[:, None])
    return np.stack(corners, axis=1)


def geometry(corners: np.ndarray) -> dict[str, np.ndarray]:
    """The rows' numbers, vectorized: as :func:`archive.db.sky.footprint_geometry` per footprint."""
    following = np.roll(corners, -1, axis=1)
    cross = np.cross(corners, following)
    mean = corners.sum(axis=1)
    centre = mean / np.linalg.norm(mean, axis=1)[:, None]
    clockwise = np.einsum("ij,ij->i", cross[:, 0], centre) < 0
    corners = np.where(clockwise[:, None, None], corners[:, ::-1], corners)
    following = np.roll(corners, -1, axis=1)
    cross = np.cross(corners, following)
    normals = cross / np.linalg.norm(cross, axis=2)[..., None]
    ra = np.degrees(np.arctan2(corners[..., 1], corners[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(corners[..., 2], -1, 1)))
    radius = np.degrees(np.arccos(np.clip(np.einsum("ijk,ik->ij", corners, centre), -1, 1))).max(axis=1)
    return {
        "corners": corners, "normals": normals, "starts": np.cross(normals, corners),
        "ends": np.cross(following, normals), "ra": ra, "dec": dec, "radius": radius,
        "centre_ra": np.degrees(np.arctan2(centre[:, 1], centre[:, 0])) % 360.0,
        "centre_dec": np.degrees(np.arcsin(np.clip(centre[:, 2], -1, 1))),
    }


def _cells(args) -> list[np.ndarray]:
    from archive.db.sky import cone_cells

    ras, decs, radii = args
    return [cone_cells(r, d, s) for r, d, s in zip(ras, decs, radii)]


def all_cells(g: dict[str, np.ndarray], workers: int) -> list[np.ndarray]:
    """HEALPix cells per footprint (:func:`archive.db.sky.cone_cells`), in a process pool."""
    n = len(g["radius"])
    step = 20_000
    parts = [(g["centre_ra"][i:i + step], g["centre_dec"][i:i + step], g["radius"][i:i + step]) for i in range(0, n, step)]
    with ProcessPoolExecutor(workers) as pool:
        return [cells for part in pool.map(_cells, parts) for cells in part]


def check_sample(g: dict[str, np.ndarray], cells: list[np.ndarray], k: int = 200) -> None:
    """The vectorized rows equal what archive writes for the same corners."""
    from archive.db.sky import footprint_geometry

    for i in range(0, len(cells), max(1, len(cells) // k)):
        ref = footprint_geometry(list(zip(g["ra"][i], g["dec"][i])))
        assert np.allclose(ref.normals, g["normals"][i], atol=1e-9), i
        assert np.allclose(ref.starts, g["starts"][i], atol=1e-9) and np.allclose(ref.ends, g["ends"][i], atol=1e-9)
        assert np.array_equal(ref.cells, cells[i]), i


def load(engine, g: dict[str, np.ndarray], cells: list[np.ndarray]) -> float:
    """Bulk-load frames and footprint rows; returns seconds."""
    from archive.db.bulk import insert_rows
    from archive.db.models import Footprint, FootprintCell, FootprintCorner, Frame

    n = len(cells)
    sqlite = engine.dialect.name == "sqlite"
    now = dt.datetime(2026, 12, 1)
    stamp = now.isoformat(sep=" ") if sqlite else now
    frame_cols = [c.name for c in Frame.__table__.columns]
    defaults = {"image_type": "light", "exposure_time_s": 300.0, "hdu_index": 0, "header": "", "sources": "{}",
                "ingested_at": stamp}
    template = [defaults.get(c) for c in frame_cols]
    id_at, sha_at = frame_cols.index("id"), frame_cols.index("sha256")

    def frame_row(frame_id: int) -> tuple:
        row = template.copy()
        row[id_at], row[sha_at] = frame_id, f"{frame_id:064x}"
        return tuple(row)

    # footprint_corners' columns after (frame_id, corner): ra, dec, then c, n, u, w (x, y, z each)
    numbers = np.concatenate([g["ra"][..., None], g["dec"][..., None], g["corners"], g["normals"], g["starts"],
                              g["ends"]], axis=2)
    t = time.perf_counter()
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        with engine.begin() as conn:
            insert_rows(conn, Frame.__table__, [frame_row(i + 1) for i in range(start, stop)])
            insert_rows(conn, Footprint.__table__, [
                (i + 1, "header", ra, dec, radius, None, 6, None, None, stamp) for i, ra, dec, radius in zip(
                    range(start, stop), g["centre_ra"][start:stop].tolist(), g["centre_dec"][start:stop].tolist(),
                    g["radius"][start:stop].tolist())])
            insert_rows(conn, FootprintCorner.__table__, [
                (start + j // 4 + 1, j % 4, *values)
                for j, values in enumerate(numbers[start:stop].reshape(-1, numbers.shape[2]).tolist())])
            insert_rows(conn, FootprintCell.__table__,
                        [(int(cell), i + 1) for i in range(start, stop) for cell in cells[i]])
    with engine.begin() as conn:
        if not sqlite:
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('frames', 'id'), (SELECT max(id) FROM frames))")
        conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - t


def queries(engine, g: dict[str, np.ndarray], n_queries: int, radius: float, seed: int = 7) -> dict[str, tuple]:
    """Median and 95th percentile (ms) and mean matches of cone and covers queries."""
    from archive.db.frames import FrameFilter, frame_query
    from archive.db.models import Frame
    from archive.db.session import session_scope

    rng = np.random.default_rng(seed)
    n = len(g["radius"])
    picks = rng.integers(0, n, n_queries // 2)
    positions = [(float(g["centre_ra"][i]), float(g["centre_dec"][i])) for i in picks]
    positions += [(float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1)))))
                  for _ in range(n_queries - len(positions))]
    out = {}
    for kind in ("cone", "covers"):
        times, hits = [], []
        with session_scope(engine) as session:
            for ra, dec in positions[:5]:  # warm the caches
                f = FrameFilter(cone=(ra, dec, radius)) if kind == "cone" else FrameFilter(covers=(ra, dec))
                session.execute(frame_query(f, Frame.id)).all()
            for ra, dec in positions:
                f = FrameFilter(cone=(ra, dec, radius)) if kind == "cone" else FrameFilter(covers=(ra, dec))
                t = time.perf_counter()
                found = session.execute(frame_query(f, Frame.id)).all()
                times.append((time.perf_counter() - t) * 1000)
                hits.append(len(found))
        out[kind] = (float(np.median(times)), float(np.percentile(times, 95)), float(np.mean(hits)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="Synthetic footprints (default 1,000,000).")
    parser.add_argument("--queries", type=int, default=400, help="Queries of each kind (default 400).")
    parser.add_argument("--radius", type=float, default=0.5, help="Cone radius, deg (default 0.5).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes computing the cells.")
    args = parser.parse_args()

    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.engine import make_url

    from archive.db.migrate import upgrade
    from archive.db.models import FootprintCell
    from archive.db.session import open_catalogue
    from archive.db.sky import HEALPIX_ORDER

    t = time.perf_counter()
    g = geometry(synthetic_corners(args.n))
    cells = all_cells(g, args.workers)
    check_sample(g, cells)
    n_cells = sum(len(c) for c in cells)
    print(f"== sky: cone ({args.radius} deg) and covers over {args.n:,} SYNTHETIC footprints "
          f"(0.2-1.5 deg, {n_cells:,} HEALPix cells at order {HEALPIX_ORDER}, {n_cells / args.n:.1f} per footprint; "
          f"made in {time.perf_counter() - t:.0f} s) ==")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_sky_") as tmp:
        for backend in ("sqlite", "postgresql"):
            admin = None
            pg_name = f"archive_bench_sky_{uuid.uuid4().hex[:8]}"
            if backend == "sqlite":
                engine = open_catalogue(Path(tmp) / "sky.sqlite")
            else:
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
                engine = create_engine(make_url(PG_ADMIN_URL).set(database=pg_name))
                upgrade(engine)
            try:
                load_s = load(engine, g, cells)
                with engine.connect() as conn:
                    assert conn.execute(select(func.count()).select_from(FootprintCell)).scalar() == n_cells
                results.append((backend, load_s, queries(engine, g, args.queries, args.radius)))
            finally:
                engine.dispose()
                if admin is not None:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
                    admin.dispose()
    print(f"{'backend':12s} {'load s':>7s} {'query':>7s} {'median ms':>10s} {'p95 ms':>8s} {'mean frames':>12s}")
    for backend, load_s, res in results:
        for kind, (median, p95, hits) in res.items():
            verdict = "(target p95 < 50 ms: met)" if p95 < 50 else "(target p95 < 50 ms: MISSED)"
            print(f"{backend:12s} {load_s:7.0f} {kind:>7s} {median:10.2f} {p95:8.2f} {hits:12.2f}  {verdict}")


if __name__ == "__main__":
    main()
