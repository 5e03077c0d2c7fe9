"""Ingest benchmark (issue 2): a synthetic night of N N.I.N.A.-style frames, timed three ways
in the same run:

1. ccdproc's ``ImageFileCollection(folder).summary`` (the baseline, one per sub-folder since
   it does not recurse),
2. archive's ingest into a new SQLite catalogue (both cores),
3. the same ingest again, every file unchanged;

Each runs in a new Python process (so none inherits another's heap or page cache warm-up
beyond the files themselves), ``--repeat`` times (the best run of each side is kept: the
machine is shared); the operation is timed inside it, and the whole process (interpreter
start-up and imports included) from outside: for archive, the command an observer runs
(``archive --db FILE ingest FOLDER``), in runs of its own alternating with the timed ones.
Targets (issue 13, whole processes): first ingest >= 10x faster than the baseline,
re-ingest >= 50x.

``--without-footprints`` turns off the footprints of lights at ingest (a user file with
``[sky.footprint] image_types = []``, through ``ARCHIVE_CONFIG``): the same work as the code
before footprints existed, for a comparison with it (issue 9: "no slower than before").

Usage::

    python benchmarks/bench_ingest.py               # N = 2000 and 20000
    python benchmarks/bench_ingest.py --n 500       # a quick look
    python benchmarks/bench_ingest.py --without-footprints
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_cli import archive_command  # noqa: E402 - the one way to run the installed command

FILTERS = ("L", "R", "G", "B", "Ha", "OIII", "SII")
TYPES = ("LIGHT",) * 6 + ("DARK", "FLAT", "BIAS", "DARKFLAT")


def nina_header(i: int) -> fits.Header:
    """About 90 cards, as N.I.N.A. 3 writes for a CMOS camera."""
    second = 20 * 3600 + i * 7  # one frame every 7 s from 20:00 UTC
    stamp = f"2026-11-20T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}.{i % 1000:03d}"
    image_type = TYPES[i % len(TYPES)]
    h = fits.Header()
    cards = {
        "IMAGETYP": image_type, "EXPOSURE": 120.0, "EXPTIME": 120.0, "DATE-LOC": stamp, "DATE-OBS": stamp,
        "XBINNING": 1, "YBINNING": 1, "GAIN": 100, "OFFSET": 50, "EGAIN": 0.25, "XPIXSZ": 3.76, "YPIXSZ": 3.76,
        "INSTRUME": "ZWO ASI2600MM Pro", "SET-TEMP": -10.0, "CCD-TEMP": -10.1, "BAYERPAT": "RGGB",
        "XBAYROFF": 0, "YBAYROFF": 0, "READOUTM": "Normal", "USBLIMIT": 40, "CAMERAID": "ASI2600",
        "TELESCOP": "Esprit 100ED", "FOCALLEN": 550.0, "FOCRATIO": 5.5, "RA": 10.684708, "DEC": 41.26875,
        "CENTALT": 65.2, "CENTAZ": 120.5, "AIRMASS": 1.1, "PIERSIDE": "West", "SITEELEV": 400.0,
        "SITELAT": 47.37, "SITELONG": 8.54, "OBJECT": "M 31", "OBJCTRA": "00 42 44.330",
        "OBJCTDEC": "+41 16 07.50", "OBJCTROT": 12.3, "FWHEEL": "ZWO EFW", "FILTER": FILTERS[i % len(FILTERS)],
        "FOCNAME": "ZWO EAF", "FOCPOS": 12345, "FOCUSPOS": 12345, "FOCUSSZ": 1.0, "FOCTEMP": 4.5,
        "FOCUSTEM": 4.5, "ROTATOR": "None", "ROTNAME": "None", "ROTATANG": 0.0, "ROTSTPSZ": 0.1,
        "SWCREATE": "N.I.N.A. 3.1.2.9001", "ROWORDER": "TOP-DOWN", "EQUINOX": 2000.0,
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 16.0, "CRPIX2": 16.0,
        "CRVAL1": 10.684708, "CRVAL2": 41.26875, "CDELT1": 0.00039, "CDELT2": 0.00039,
        "CROTA1": 12.3, "CROTA2": 12.3, "HFR": 2.1, "STARS": 1234, "MOONANGL": 80.0, "MOONPHAS": 0.5,
        "SUNANGLE": -30.0, "WINDSPD": 2.0, "WINDDIR": 180.0, "HUMIDITY": 70.0, "PRESSURE": 1013.0,
        "AMBTEMP": 5.0, "DEWPOINT": 0.0, "CLOUDCVR": 0.0, "SKYBRGHT": 19.5, "SKYQUAL": 20.5,
        "SKYTEMP": -20.0, "STARFWHM": 3.2, "RAINRATE": 0.0, "WINDGUST": 4.0, "OBSERVER": "Observer",
        "SEQUENCE": "M31 mosaic", "TARGETID": "M31-1", "FRAMENUM": i, "GUIDERMS": 0.6,
        "GUIDERA": 0.4, "GUIDEDEC": 0.45, "DITHER": True, "COMMENTS": "synthetic benchmark frame",
    }
    for key, value in cards.items():
        h[key] = value
    return h


def write_night(folder: Path, n: int) -> None:
    """N frames of 64x64 uint16 with distinct pixels, in the folder layout N.I.N.A. uses."""
    rng = np.random.default_rng(1)
    base = rng.integers(900, 1100, size=(64, 64), dtype=np.uint16)
    for i in range(n):
        header = nina_header(i)
        sub = folder / header["IMAGETYP"] / header["FILTER"]
        sub.mkdir(parents=True, exist_ok=True)
        data = base.copy()
        data.flat[i % data.size] = i % 65535  # every frame's bytes differ
        fits.PrimaryHDU(data, header).writeto(sub / f"M31_{header['IMAGETYP']}_{i:06d}.fits")


BASELINE = """
import sys, time, warnings
from pathlib import Path
from ccdproc import ImageFileCollection
folders = sorted({p.parent for p in Path(sys.argv[1]).rglob("*.fits")})  # it does not recurse
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for folder in folders:
        _ = ImageFileCollection(str(folder)).summary  # the property builds the table
print(time.perf_counter() - start)
"""

ARCHIVE = """
import sys, time
from archive.db.session import open_catalogue
from archive.ingest import ingest_paths
engine = open_catalogue(sys.argv[2])
start = time.perf_counter()
summary = ingest_paths(engine, [sys.argv[1]])
print(time.perf_counter() - start, summary.new, summary.unchanged)
"""


def in_new_process(code: str, *args: str) -> tuple[float, float, list[str]]:
    """(time of the operation inside, wall time of the whole process, other printed values)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    inner, *rest = done.stdout.split()
    return float(inner), wall, rest


def command_wall(folder: Path, catalogue: Path) -> float:
    """Wall time (s) of the command an observer runs, ``archive --db CATALOGUE ingest FOLDER``,
    as a new process: interpreter start-up, imports, the ingest, its summary and the exit."""
    start = time.perf_counter()
    subprocess.run([*archive_command(), "--db", str(catalogue), "ingest", str(folder)], capture_output=True, check=True)
    return time.perf_counter() - start


def run(n: int, workdir: Path, repeat: int) -> None:
    folder = workdir / f"night_{n}"
    print(f"\nN = {n}: writing the synthetic night ...", flush=True)
    write_night(folder, n)
    baseline = min((in_new_process(BASELINE, str(folder)) for _ in range(repeat)), key=lambda run: run[0])
    firsts, first_walls, agains, again_walls = [], [], [], []
    for i in range(repeat):  # alternating, each first ingest into a new catalogue
        firsts.append(in_new_process(ARCHIVE, str(folder), str(workdir / f"inner_{n}_{i}.sqlite")))
        assert firsts[-1][2][0] == str(n), firsts[-1]
        first_walls.append(command_wall(folder, workdir / f"command_{n}_{i}.sqlite"))
    for i in range(repeat):
        agains.append(in_new_process(ARCHIVE, str(folder), str(workdir / f"inner_{n}_0.sqlite")))
        assert agains[-1][2] == ["0", str(n)], agains[-1]
        again_walls.append(command_wall(folder, workdir / f"command_{n}_0.sqlite"))
    rows = [
        ("ccdproc ImageFileCollection(...).summary", baseline[0], baseline[1]),
        ("archive ingest, new SQLite catalogue", min(r[0] for r in firsts), min(first_walls)),
        ("archive ingest again, all unchanged", min(r[0] for r in agains), min(again_walls)),
    ]
    print(f"  best of {repeat}, each in a new process: the operation timed inside a Python process, and the")
    print("  whole process (for archive: the command 'archive --db FILE ingest FOLDER')")
    print(f"  {'':44s} {'operation s':>12s} {'process s':>10s}")
    for label, inner, wall in rows:
        print(f"  {label:44s} {inner:12.2f} {wall:10.2f}")
    base_inner, base_wall = rows[0][1], rows[0][2]
    print(f"  ratios against ImageFileCollection ({base_inner / n * 1e3:.2f} ms a file), operation / whole process:")
    print(f"    first ingest  {base_inner / rows[1][1]:7.1f}x / {base_wall / rows[1][2]:5.1f}x   (target >= 10x)")
    print(f"    re-ingest     {base_inner / rows[2][1]:7.1f}x / {base_wall / rows[2][2]:5.1f}x   (target >= 50x)", flush=True)
    shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000], help="frames per night")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the best is kept (default 3)")
    parser.add_argument("--without-footprints", action="store_true", help="no footprints for lights at ingest")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="archive-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.without_footprints:  # the child processes read it
        config = workdir / "config.toml"
        config.write_text("[sky.footprint]\nimage_types = []\n")
        os.environ["ARCHIVE_CONFIG"] = str(config)
        print(f"footprints off ({config})")
    print(f"cores: {os.cpu_count()}; working in {workdir}")
    try:
        for n in args.n:
            run(n, workdir, args.repeat)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
