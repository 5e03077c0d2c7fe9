"""Benchmark: ``archive measure`` against Siril 1.0.6's ``register`` on the same 112 real-sized frames.

Run from the repository root (Siril from Debian: ``apt-get install siril``, ``siril-cli``)::

    python benchmarks/bench_measure.py [--workers 2] [--repeat 2]

Set-up (not timed): the 16 raw XO-1 b lights of the real ARCSAT night (1024 x 1024, 16-bit;
../shared/data) are copied 7 times each (112 frames). Each copy is the original's pixels
rolled by (3 copy, 2 copy) px, so that every frame is its own exposure with its own shift
onto the reference, with one header card of its own and DATE-OBS moved by a millisecond per
copy (not a duplicate exposure). They are ingested into a fresh SQLite catalogue; Siril
``convert`` makes them a sequence (in a folder of its own; the sources are left alone).

Timed, each side in a child process (start-up included), alternating, best of ``--repeat``,
with the same number of cores:

* archive: ``archive measure --force --workers N``: background and noise (sigma-clipped),
  star detection (SEP), moments of every star, Moffat fits of the 10 brightest isolated
  stars (FWHM), saturation, the weight, the star list, catalogue writes and judging;
* Siril (``siril-cli -s``, ``setcpu N``): ``register f -norot -minpairs=5``: for every frame
  Siril detects the stars and fits their PSF (FWHM, roundness; its ``findstar``), matches
  them with the reference's and computes the shift, writing it and the FWHM into the
  sequence file. ``-norot`` (translation only) writes no registered images, as
  ``archive measure`` writes none; ``-minpairs=5`` because Siril's findstar keeps about 8
  stars in this sparse field, fewer than its default of 10 pairs (every frame would be
  skipped after its stars were found and fitted). Before each run the sequence file is
  removed (no registration data of the run before); Siril makes it again from the files.

The figures: wall time of each side, ms per frame, the ratio archive / Siril (target <= 1),
and the median FWHM each reports (px), as a check that both measured the same stars.
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

ROOT = Path(__file__).resolve().parents[1]
NIGHT = ROOT.parent / "shared" / "data" / "arcsat-uw-astr480" / "data" / "20250601"
COPIES = 7


def make_frames(folder: Path) -> list[Path]:
    """112 distinct frames from the 16 XO-1 b lights, each copy rolled by (3 copy, 2 copy) px
    (set-up, not timed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for light in sorted(NIGHT.glob("XO1-b_z_*.fits")):
        for copy in range(COPIES):
            with fits.open(light) as hdul:
                header = hdul[0].header.copy()
                data = np.roll(hdul[0].data, (2 * copy, 3 * copy), axis=(0, 1))
            header["BENCHCPY"] = (copy, "benchmark copy, rolled by (3 copy, 2 copy) px")
            if copy:  # another exposure, not a duplicate of the original (same instrument and DATE-OBS)
                start = header["DATE-OBS"]
                header["DATE-OBS"] = start[:17] + f"{(float(start[17:19]) + copy * 0.001):06.3f}"
            target = folder / f"{light.stem}_{copy}.fits"
            fits.PrimaryHDU(data, header=header).writeto(target)
            paths.append(target)
    return paths


def siril_fwhm(seq: Path) -> float | None:
    """Median FWHM (px) of the registration data Siril wrote into a sequence file: its 'R'
    lines (sequence format 3, Siril 1.0) are ``R<layer> dx dy fwhm weighted_fwhm roundness
    quality`` per image (FWHM 0 when not registered)."""
    values = []
    for line in seq.read_text(errors="replace").splitlines():
        if line.startswith("R"):
            try:
                value = float(line.split()[3])
            except (IndexError, ValueError):
                continue
            if value > 0:
                values.append(value)
    return float(np.median(values)) if values else None


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str]:
    """Run ``command``: wall time (s), exit status, output."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def archive_fwhm(database: Path) -> float:
    """Median of the lights' measured FWHM (px) in the benchmark's catalogue."""
    import sqlite3

    with sqlite3.connect(database) as db:
        values = [v for (v,) in db.execute("SELECT fwhm_px FROM frame_measurements WHERE fwhm_px IS NOT NULL")]
    return float(np.median(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="Runs per side (the best is reported).")
    args = parser.parse_args()
    archive = shutil.which("archive")
    siril = shutil.which("siril-cli")
    with tempfile.TemporaryDirectory(prefix="bench_measure_") as tmp:
        folder = Path(tmp)
        frames = make_frames(folder / "frames")
        database = folder / "catalogue.sqlite"
        (folder / "none.toml").write_text("")  # the package defaults only, not the user's file
        env = {**os.environ, "ARCHIVE_CONFIG": str(folder / "none.toml")}
        wall, code, output = timed([archive, "--db", str(database), "-q", "ingest", str(folder / "frames")], folder, env)
        if code:
            print(output)
            return 1
        print(f"{len(frames)} frames ingested (set-up, {wall:.1f} s, not timed)")
        if not siril:
            print("Siril (siril-cli) is not installed: apt-get install -y siril; no comparison made.")
            return 1
        sources, sdir = folder / "siril_in", folder / "siril"
        sources.mkdir()
        sdir.mkdir()
        for i, p in enumerate(frames, 1):
            os.symlink(p, sources / f"f_{i:05d}.fits")
        (folder / "convert.ssf").write_text(f"requires 1.0.0\ncd {sources}\nconvert f -out={sdir}\n")
        wall, code, output = timed([siril, "-s", str(folder / "convert.ssf")], folder)
        if code or len(list(sdir.glob("f_*.fit"))) != len(frames):
            print(f"Siril convert failed:\n{output[-2000:]}")
            return 1
        print(f"Siril convert (set-up, {wall:.1f} s, not timed)")
        (folder / "register.ssf").write_text(
            f"requires 1.0.0\nsetcpu {args.workers}\ncd {sdir}\nregister f -norot -minpairs=5\n")
        ours, theirs = [], []
        for _ in range(args.repeat):
            wall, code, output = timed([archive, "--db", str(database), "-q", "measure", "--force", "--workers",
                                        str(args.workers)], folder, env)
            if code:
                print(output)
                return 1
            ours.append((wall, output.strip().splitlines()[-1] if output.strip() else ""))
            (sdir / "f_.seq").unlink(missing_ok=True)  # no registration data from the run before
            wall, code, output = timed([siril, "-s", str(folder / "register.ssf")], folder)
            if code:
                print(f"Siril register failed (exit {code}):\n{output[-2000:]}")
                return 1
            note = [line.removeprefix("log: ").strip() for line in output.splitlines()
                    if "registered" in line.lower() and "total" in line.lower()]
            theirs.append((wall, note[-1] if note else ""))
        best, note = min(ours)
        ours_fwhm = archive_fwhm(database)
        print(f"archive measure ({args.workers} workers), {len(frames)} frames, best of {args.repeat}: {best:.2f} s "
              f"({best / len(frames) * 1000:.0f} ms/frame; all: {', '.join(f'{w:.2f}' for w, _ in ours)})  {note}; "
              f"median FWHM {ours_fwhm:.2f} px")
        s_best, s_note = min(theirs)
        version = subprocess.run([siril, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        s_fwhm = siril_fwhm(sdir / "f_.seq")
        print(f"{version} register -norot ({args.workers} threads), best of {args.repeat}: {s_best:.2f} s "
              f"({s_best / len(frames) * 1000:.0f} ms/frame; all: {', '.join(f'{w:.2f}' for w, _ in theirs)})  "
              f"{s_note}; median FWHM {s_fwhm if s_fwhm is None else round(s_fwhm, 2)} px")
        ratio = best / s_best
        print(f"wall-time ratio archive/siril: {ratio:.2f} (target <= 1): {'met' if ratio <= 1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
