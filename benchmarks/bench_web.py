"""Benchmark: every page kind of ``archive serve`` on a synthetic catalogue of 1,000,000 frames,
SQLite and PostgreSQL (issue 12, part 3; target: p95 under 300 ms per page).

The catalogue is SYNTHETIC: :func:`bench_masters.synthetic_rows` (5 instruments, ~250 frames per
instrument and night, 6 of them masters; raw calibrations and lights in three filters), with a
target per instrument and night among 200 (so ~4,000 lights per target), one current
canonical copy per frame, 5,000 ingest problems and 5,000 rejected reductions (a light each).
Bulk-loaded: ``COPY`` on PostgreSQL, ``executemany`` on SQLite. No frame is measured (every
verdict is "unmeasured", still looked up), and no file exists, so the preview route is not
timed (it reads a FITS file; the page that shows it is).

Each page kind is requested ``--requests`` times through Starlette's test client (the whole
application: routing, session, queries, template), after 3 untimed requests; pages about one
thing (a night, a target, a frame, a report) pick it at random each time. Printed: median and
95th percentile per backend and page kind.

PostgreSQL: a scratch database on ``ARCHIVE_TEST_PG_URL`` (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards.

    python benchmarks/bench_web.py              # 1,000,000 frames
    python benchmarks/bench_web.py --n 50000    # a quick look
    python benchmarks/bench_web.py --keep /tmp/bench_web   # build once, reuse on the next runs

``--keep DIR`` keeps the catalogues (DIR/web_<n>.sqlite and a PostgreSQL database named after
DIR and n) and reuses them when a run finds them complete: building 1,000,000 frames takes
minutes, the pages seconds. Drop the database yourself when done (its name is printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_masters import synthetic_rows, load_catalogue  # noqa: E402 - the one synthetic catalogue

PG_ADMIN_URL = os.environ.get("ARCHIVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = 200
PER_GROUP = 250  # frames per instrument and night in synthetic_rows
N_PROBLEMS = 5000
N_REJECTED = 5000
TARGET_MS = 300.0


def with_targets(frames: list[dict]) -> list[str]:
    """Give each light a target (one per instrument and night, among :data:`TARGETS`); return the names given."""
    from archive.db.frames import target_key

    names = [f"NGC {1000 + i}" for i in range(TARGETS)]
    used = set()
    for row in frames:
        name = names[((row["id"] - 1) // PER_GROUP) % TARGETS] if row["image_type"] == "light" else None
        row["target"], row["target_key"] = name, target_key(name)
        used.add(name)
    return sorted(used - {None})


def load_extras(engine, frames: list[dict]) -> None:
    """Copies (one per frame), ingest problems and rejected reductions, bulk-loaded."""
    from archive.db.bulk import insert_rows
    from archive.db.models import Copy, IngestProblem, Reduction, ReductionInput

    sqlite = engine.dialect.name == "sqlite"
    now = dt.datetime(2026, 12, 1)
    stamp = now.isoformat(sep=" ") if sqlite else now
    lights = [f["id"] for f in frames if f["image_type"] == "light"]
    rng = random.Random(12)
    with engine.begin() as conn:
        for start in range(0, len(frames), 100_000):
            insert_rows(conn, Copy.__table__, [
                (f["id"], f["id"], f"/data/{f['night']}/cam{f['instrument_id']}/frame_{f['id']:07d}.fits", 50_000_000,
                 1_700_000_000_000_000_000, f["sha256"], True, True, stamp, None, None)
                for f in frames[start:start + 100_000]])
        insert_rows(conn, IngestProblem.__table__, [
            (i + 1, None, f"/data/broken/file_{i:05d}.fits", 2880, 0, "error" if i % 3 else "warning",
             "not a FITS file: missing SIMPLE card" if i % 3 else "no DATE-OBS: night unknown", stamp, False)
            for i in range(N_PROBLEMS)])
        chosen = rng.sample(lights, min(N_REJECTED, len(lights)))
        insert_rows(conn, Reduction.__table__, [
            (i + 1, "register", f"{i + 1:064x}", "{}", "{}", "bench", stamp, stamp, "rejected",
             "too few stars to align (3 < 10)", "default:1", None, None, None, "alignment", None, None, None)
            for i in range(len(chosen))])
        insert_rows(conn, ReductionInput.__table__, [(i + 1, fid, "light") for i, fid in enumerate(chosen)])
        if not sqlite:
            for table in ("copies", "ingest_problems", "reductions"):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def pages(frames: list[dict], targets: list[str], rng: random.Random) -> dict[str, callable]:
    """Page kind -> a function giving the next URL to request."""
    from urllib.parse import quote

    nights = sorted({f["night"] for f in frames})
    ids = [f["id"] for f in frames]
    return {
        "nights": lambda: "/nights",
        "night": lambda: f"/nights/{rng.choice(nights).isoformat()}",
        "targets": lambda: "/targets",
        "target": lambda: f"/targets/{quote(rng.choice(targets))}",
        "frame": lambda: f"/frames/{rng.choice(ids)}",
        "masters": lambda: "/masters",
        "reports": lambda: "/queries",
        "report nights": lambda: "/queries/nights",
        "report by target (csv)": lambda: "/queries/integration_by_target_filter?format=csv",
        "report problems": lambda: "/queries/problems?severity=error",
        "problems": lambda: "/problems",
        "unknown frame (404)": lambda: f"/frames/{len(ids) + rng.randint(1, 1000)}",
    }


def time_pages(engine, kinds: dict, n_requests: int) -> dict[str, tuple[float, float]]:
    """Median and 95th percentile (ms) per page kind."""
    from starlette.testclient import TestClient

    from archive.web import create_app

    out = {}
    with TestClient(create_app(engine), raise_server_exceptions=True) as client:
        for kind, url in kinds.items():
            expected = 404 if "404" in kind else 200
            for _ in range(3):  # warm the caches
                assert client.get(url()).status_code == expected, kind
            times = []
            for _ in range(n_requests):
                address = url()
                t = time.perf_counter()
                response = client.get(address)
                times.append((time.perf_counter() - t) * 1000)
                assert response.status_code == expected, (address, response.status_code)
            out[kind] = (float(np.median(times)), float(np.percentile(times, 95)))
            print(f"  {kind:24s} {out[kind][0]:8.1f} {out[kind][1]:8.1f}", flush=True)
    return out


def _complete(backend: str, path: Path, admin, pg_name: str, url: str, n_frames: int) -> bool:
    """A kept catalogue (``--keep``) was built to the end for these frames."""
    from sqlalchemy import create_engine, text

    if backend == "sqlite":
        if not path.exists():
            return False
    else:
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": pg_name}).first():
                return False
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT frames FROM bench_web_complete").scalar() == n_frames
    except Exception:  # no mark: an interrupted build
        return False
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="Synthetic frames (default 1,000,000).")
    parser.add_argument("--requests", type=int, default=30, help="Timed requests per page kind (default 30).")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="Keep the catalogues (SQLite file in DIR, a PostgreSQL database named after DIR) and "
                             "reuse them when complete, instead of building them in a scratch place each run.")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from archive.db.migrate import upgrade
    from archive.db.session import open_catalogue

    t = time.perf_counter()
    frames, masters, nights = synthetic_rows(args.n)
    targets = with_targets(frames)
    gc.freeze()  # the synthetic rows stay for the second backend: out of the collector's way, as a server has no such list
    print(f"== web: every page kind over {len(frames):,} SYNTHETIC frames ({nights} nights, {len(masters):,} masters, "
          f"{TARGETS} targets; made in {time.perf_counter() - t:.0f} s), {args.requests} requests each ==")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = []
    keep = args.keep.resolve() if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_web_") as tmp:
        folder = keep or Path(tmp)
        for backend in backends:
            admin = None
            if keep:
                digest = hashlib.sha256(str(keep).encode()).hexdigest()[:8]
                pg_name = f"archive_bench_web_keep_{digest}_{len(frames)}"
            else:
                pg_name = f"archive_bench_web_{uuid.uuid4().hex[:8]}"
            path = folder / f"web_{len(frames)}.sqlite"
            if backend == "sqlite":
                url = f"sqlite:///{path}"
            else:
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                url = make_url(PG_ADMIN_URL).set(database=pg_name).render_as_string(hide_password=False)
            try:
                reuse = keep is not None and _complete(backend, path, admin, pg_name, url, len(frames))
                if not reuse:
                    if backend == "sqlite":
                        path.unlink(missing_ok=True)
                    else:
                        with admin.connect() as conn:
                            conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
                            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
                    upgrade(create_engine(url))
                    loader = create_engine(url)
                    t = time.perf_counter()
                    load_catalogue(loader, frames, masters, nights)
                    load_extras(loader, frames)
                    with loader.begin() as conn:  # the mark of a complete catalogue, for --keep
                        conn.exec_driver_sql("CREATE TABLE bench_web_complete (frames INTEGER)")
                        conn.exec_driver_sql(f"INSERT INTO bench_web_complete VALUES ({len(frames)})")
                    loader.dispose()
                    how = f"loaded in {time.perf_counter() - t:.0f} s"
                else:
                    upgrade(create_engine(url))  # a kept catalogue gets the schema's newer revisions
                    how = "reused (--keep)"
                engine = open_catalogue(path if backend == "sqlite" else url, create=False)
                where = f" database {pg_name}" if keep and backend == "postgresql" else ""
                print(f"{backend}:{where} {how}\n  {'page':24s} {'median ms':>8s} {'p95 ms':>8s}", flush=True)
                results.append((backend, time_pages(engine, pages(frames, targets, random.Random(5)), args.requests)))
                engine.dispose()
            finally:
                if admin is not None:
                    if not keep:
                        with admin.connect() as conn:
                            conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
                    admin.dispose()
    print(f"\n{'backend':12s} {'page':24s} {'median ms':>10s} {'p95 ms':>8s}")
    for backend, res in results:
        for kind, (median, p95) in res.items():
            verdict = "met" if p95 < TARGET_MS else "MISSED"
            print(f"{backend:12s} {kind:24s} {median:10.1f} {p95:8.1f}  (target p95 < {TARGET_MS:.0f} ms: {verdict})")


if __name__ == "__main__":
    main()
