"""Ingest benchmark (issue 2): a synthetic night of N N.I.N.A.-style frames, timed three ways
in the same run:

1. ccdproc's ``ImageFileCollection(folder).summary`` (the baseline, one per sub-folder since
   it does not recurse),
2. archive's ingest into a new SQLite catalogue (both cores),
3. the same ingest again, every file unchanged;

2 and 3 are timed as the library call ``ingest_paths`` in this process (like the baseline)
and as the whole ``archive ingest`` command in a new process (start-up included).
Targets: first ingest >= 10x faster than the baseline, re-ingest >= 100x.

Usage::

    python benchmarks/bench_ingest.py               # N = 2000 and 20000
    python benchmarks/bench_ingest.py --n 500       # a quick look
"""

from __future__ import annotations

import argparse
import os
import warnings
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

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


def timed(label: str, func) -> float:
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    print(f"  {label:<44} {seconds:9.2f} s", flush=True)
    return seconds


def run(n: int, workdir: Path) -> None:
    from ccdproc import ImageFileCollection

    from archive.config import load_settings
    from archive.db.session import open_catalogue
    from archive.ingest import ingest_paths

    folder = workdir / f"night_{n}"
    print(f"\nN = {n}: writing the synthetic night ...", flush=True)
    write_night(folder, n)
    subfolders = sorted({p.parent for p in folder.rglob("*.fits")})

    def baseline():  # ImageFileCollection does not recurse: one collection per folder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for sub in subfolders:
                _ = ImageFileCollection(str(sub)).summary  # the property builds the table

    settings = load_settings()
    engine = open_catalogue(workdir / f"library_{n}.sqlite")
    command_db = workdir / f"command_{n}.sqlite"
    command = [sys.executable, "-m", "archive.cli", "--quiet", "--db", str(command_db), "ingest", str(folder)]

    print("  the ingest itself (library calls in this process, as ImageFileCollection):")
    t_ifc = timed("ccdproc ImageFileCollection(...).summary", baseline)
    t_first = timed("archive ingest_paths, new SQLite catalogue", lambda: ingest_paths(engine, [folder], settings=settings))
    t_again = timed("archive ingest_paths again, all unchanged", lambda: ingest_paths(engine, [folder], settings=settings))
    print("  the whole command (a new process: ~0.6 s of Python start-up and imports included):")
    c_first = timed("archive ingest FOLDER, new SQLite catalogue", lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
    c_again = timed("archive ingest FOLDER again, all unchanged", lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
    engine.dispose()
    print(f"  ratios against ImageFileCollection ({t_ifc / n * 1e3:.2f} ms a file):")
    print(f"    first ingest  {t_ifc / t_first:7.1f}x (target >= 10x)   command: {t_ifc / c_first:7.1f}x")
    print(f"    re-ingest     {t_ifc / t_again:7.1f}x (target >= 100x)  command: {t_ifc / c_again:7.1f}x", flush=True)
    shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000], help="frames per night")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="archive-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}; working in {workdir}")
    try:
        for n in args.n:
            run(n, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
