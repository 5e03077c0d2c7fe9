"""Benchmark: ``archive measure`` against Siril's ``register`` on the same 112 real-sized frames.

Run from the repository root::

    python benchmarks/bench_measure.py [--workers 2] [--repeat 2]

Set-up (not timed): the 16 raw XO-1 b lights of the real ARCSAT night (1024 x 1024, 16-bit;
../shared/data) are copied 7 times each, every copy with one header card of its own so that
the 112 files are 112 frames (DATE-OBS moved by a millisecond per copy so that no copy is a
duplicate exposure; identical pixels per original: star detection and fitting do the
same work on each copy). They are ingested into a fresh SQLite catalogue; Siril converts them
into a sequence (``convert``).

Timed, each side in a child process, alternating, best of ``--repeat``:

* archive: ``archive measure --force --workers N`` (background and noise, star detection with
  SEP, moments of every star, Moffat fits of the 20 brightest, the star list, catalogue
  writes and judging);
* Siril (``siril-cli``, Debian package ``siril``): ``register`` of the converted sequence, which
  detects the stars of every frame, fits their PSF (FWHM) and aligns them onto a reference.
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

from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
NIGHT = ROOT.parent / "shared" / "data" / "arcsat-uw-astr480" / "data" / "20250601"
COPIES = 7


def make_frames(folder: Path) -> list[Path]:
    """112 distinct frames from the 16 XO-1 b lights (set-up, not timed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for light in sorted(NIGHT.glob("XO1-b_z_*.fits")):
        for copy in range(COPIES):
            with fits.open(light) as hdul:
                hdul[0].header["BENCHCPY"] = (copy, "benchmark copy (distinct bytes)")
                if copy:  # another exposure, not a duplicate of the original (same instrument and DATE-OBS)
                    start = hdul[0].header["DATE-OBS"]
                    hdul[0].header["DATE-OBS"] = start[:17] + f"{(float(start[17:19]) + copy * 0.001):06.3f}"
                target = folder / f"{light.stem}_{copy}.fits"
                hdul.writeto(target)
            paths.append(target)
    return paths


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str]:
    """Run ``command``: wall time (s), exit status, output."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


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
        env = {**os.environ, "ARCHIVE_CONFIG": str(folder / "none.toml")}
        wall, code, output = timed([archive, "--db", str(database), "-q", "ingest", str(folder / "frames")], folder, env)
        if code:
            print(output)
            return 1
        print(f"{len(frames)} frames ingested (set-up, {wall:.1f} s, not timed)")
        sdir = folder / "siril"
        if siril:
            sdir.mkdir()
            for i, p in enumerate(frames, 1):
                os.symlink(p, sdir / f"f_{i:05d}.fits")
            (sdir / "convert.ssf").write_text(f"requires 1.0.0\ncd {sdir}\nconvert f -out={sdir}\n")
            wall, code, output = timed([siril, "-s", str(sdir / "convert.ssf")], sdir)
            if code:
                print(f"Siril convert failed:\n{output[-2000:]}")
                return 1
            print(f"Siril convert (set-up, {wall:.1f} s, not timed)")
            (sdir / "register.ssf").write_text(f"requires 1.0.0\nsetcpu {args.workers}\ncd {sdir}\nregister f_\n")
        ours, theirs = [], []
        for _ in range(args.repeat):
            wall, code, output = timed([archive, "--db", str(database), "-q", "measure", "--force", "--workers",
                                        str(args.workers)], folder, env)
            if code:
                print(output)
                return 1
            ours.append((wall, output.strip().splitlines()[-1] if output.strip() else ""))
            if siril:
                for old in sdir.glob("r_f_*"):
                    old.unlink()
                wall, code, output = timed([siril, "-s", str(sdir / "register.ssf")], sdir)
                if code:
                    print(f"Siril register failed (exit {code}):\n{output[-2000:]}")
                    return 1
                note = [line for line in output.splitlines() if "registered" in line.lower()]
                theirs.append((wall, note[-1].strip() if note else ""))
        best, note = min(ours)
        print(f"archive measure ({args.workers} workers), {len(frames)} frames, best of {args.repeat}: {best:.2f} s "
              f"({best / len(frames) * 1000:.0f} ms/frame; all: {', '.join(f'{w:.2f}' for w, _ in ours)})  {note}")
        if not siril:
            print("Siril (siril-cli) is not installed: apt-get install -y siril; no comparison made.")
            return 0
        s_best, s_note = min(theirs)
        version = subprocess.run([siril, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        print(f"{version} register ({args.workers} threads), best of {args.repeat}: {s_best:.2f} s "
              f"(all: {', '.join(f'{w:.2f}' for w, _ in theirs)})  {s_note}")
        ratio = best / s_best
        print(f"wall-time ratio archive/siril: {ratio:.2f} (target <= 1): {'met' if ratio <= 1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
