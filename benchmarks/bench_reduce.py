"""Benchmark: registration + stacking of the 16 calibrated XO-1 b lights, archive against Siril.

Run from the repository root::

    python benchmarks/bench_reduce.py [--workers 2] [--method median]

Set-up (not timed): the 16 lights of the real ARCSAT night (../shared/data) are calibrated
with masters built by numpy (median bias, bias-subtracted median dark, median flat). Then, each
in a fresh child process so that peak memory is measured per side (``ru_maxrss`` from
``wait4``: the largest process of the side's tree):

* archive: star detection, reference choice, astroalign registration (process pool of
  ``--workers``) and a median stack, exactly the functions ``archive reduce`` runs;
* Siril (``siril-cli``, Debian package ``siril``): ``convert``, ``register``, ``stack ... med``.
  When it is not installed the script says so and reports archive alone.

Each side runs ``--repeat`` times, alternating; the best wall time of each is compared (the
machine is shared, so the spread is printed too). Prints wall times, their ratio (target:
archive within 2x of Siril) and peak memory (``ru_maxrss`` of the side's largest process:
for archive the main process, which combines the stack; each pool worker holds about one
frame and its warped copy).
"""

from __future__ import annotations

import argparse
import json
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


def calibrate_all(folder: Path) -> list[Path]:
    """Calibrate the 16 XO-1 b lights into ``folder/cal`` (set-up, not timed)."""
    sys.path.insert(0, str(ROOT))
    from archive.reduce.calibrate import CalibrationJob, calibrate_light_file

    def median(pattern: str) -> np.ndarray:
        return np.median(np.stack([fits.getdata(p).astype(np.float64) for p in sorted(NIGHT.glob(pattern))]), axis=0)

    bias = median("Bias_*.fits")
    masters = {"bias": bias, "dark": median("Dark_*.fits") - bias, "flat": median("domeflat_z_*.fits") - bias}
    for name, data in masters.items():
        fits.PrimaryHDU(data.astype(np.float32)).writeto(folder / f"m_{name}.fits", overwrite=True)
    out = folder / "cal"
    out.mkdir(exist_ok=True)
    paths = []
    for i, light in enumerate(sorted(NIGHT.glob("XO1-b_z_*.fits")), 1):
        target = out / f"cal_{i:05d}.fits"
        calibrate_light_file(CalibrationJob(
            light=str(light), output=str(target), bias=str(folder / "m_bias.fits"),
            darks=((str(folder / "m_dark.fits"), 1.0),), dark_method="exact", flat=str(folder / "m_flat.fits"),
        ))
        paths.append(target)
    return paths


def run_archive(folder: Path, workers: int, method: str) -> None:
    """The archive side (in its own process): detect, choose reference, register, stack."""
    sys.path.insert(0, str(ROOT))
    from archive.reduce.align import (
        RegistrationJob,
        choose_reference,
        count_stars,
        register_file,
    )
    from archive.reduce.executor import make_executor
    from archive.reduce.stack import StackJob, stack_files

    inputs = sorted(str(p) for p in (folder / "cal").glob("cal_*.fits"))
    out = folder / "archive_out"
    out.mkdir(exist_ok=True)
    with make_executor("process" if workers > 1 else "serial", workers) as pool:
        stars = list(pool.map(count_stars, inputs))
        reference = choose_reference([(s["path"], s["n_stars"]) for s in stars])
        ref_xy = next(s["xy"] for s in stars if s["path"] == reference)
        jobs = [RegistrationJob(source=s["path"], output=str(out / f"reg_{i:05d}.fits"), reference=reference,
                                source_xy=s["xy"], reference_xy=ref_xy) for i, s in enumerate(stars)]
        results = list(pool.map(register_file, jobs))
        ok = [r["output"] for r in results if r["ok"]]
        headers = [fits.getheader(path) for path in ok]  # what the catalogue would hand the stack
        stack = stack_files(StackJob(inputs=tuple(ok), output=str(out / "stack.fits"), method=method,
                                     exposures_s=tuple(float(h["EXPTIME"]) for h in headers),
                                     dates_obs=tuple(h["DATE-OBS"] for h in headers)),
                            executor=pool, parts=workers)
    print(json.dumps({"registered": len(ok), "failed": len(results) - len(ok), "ncombine": stack["ncombine"]}))


def timed(command: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Run ``command``; wall time (s), peak RSS (MB, largest process), exit status, output."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--method", default="median", choices=["median", "mean", "sigma_clip"])
    parser.add_argument("--repeat", type=int, default=3, help="Runs per side (the best is reported).")
    parser.add_argument("--archive-side", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.archive_side:
        run_archive(Path(args.archive_side), args.workers, args.method)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_reduce_") as tmp:
        folder = Path(tmp)
        print(f"calibrating 16 lights of {NIGHT.name} (set-up, not timed) ...")
        calibrate_all(folder)
        siril = shutil.which("siril-cli")
        sdir = folder / "siril"
        if siril:
            sdir.mkdir()
            for p in sorted((folder / "cal").glob("cal_*.fits")):
                os.symlink(p, sdir / p.name)
            script = sdir / "run.ssf"
            stack_cmd = "stack r_cal_ med -nonorm" if args.method == "median" else "stack r_cal_ rej 3 3 -nonorm"
            script.write_text(f"requires 1.0.0\nsetcpu {args.workers}\ncd {sdir}\nconvert cal -out={sdir}\n"
                              f"setfindstar 0.5 0.5\nregister cal_ -minpairs=4\n{stack_cmd} -out={sdir / 'stack_siril'}\n")
        ours, theirs = [], []
        for _ in range(args.repeat):  # alternate the two sides; keep each side's best run
            wall, rss, code, output = timed(
                [sys.executable, __file__, "--archive-side", str(folder), "--workers", str(args.workers),
                 "--method", args.method], folder)
            if code:
                print(output)
                return 1
            ours.append((wall, rss, output.strip()))
            if siril:
                for old in sdir.glob("*.fit"):  # Siril's converted and registered frames (inputs are .fits)
                    old.unlink()
                for old in list(sdir.glob("*.seq")) + list(sdir.glob("stack_siril*")):
                    old.unlink()
                s_wall, s_rss, s_code, s_output = timed([siril, "-s", str(script)], sdir)
                if s_code or not list(sdir.glob("stack_siril*")):
                    print(f"Siril failed (exit {s_code}):\n{s_output[-2000:]}")
                    return 1
                registered = [line for line in s_output.splitlines() if "registered" in line and "Total" in line]
                theirs.append((s_wall, s_rss, registered[-1].strip() if registered else ""))
        wall, rss, note = min(ours)
        print(f"archive: register + stack ({args.method}, {args.workers} workers), best of {args.repeat}: {wall:.2f} s "
              f"(all: {', '.join(f'{w:.2f}' for w, _, _ in ours)}), peak RSS {rss:.0f} MB  {note}")
        if not siril:
            print("Siril (siril-cli) is not installed: apt-get install -y siril; no comparison made.")
            return 0
        s_wall, s_rss, s_note = min(theirs)
        version = subprocess.run([siril, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        print(f"{version}: convert + register + stack, best of {args.repeat}: {s_wall:.2f} s "
              f"(all: {', '.join(f'{w:.2f}' for w, _, _ in theirs)}), peak RSS {s_rss:.0f} MB  {s_note}")
        ratio = wall / s_wall
        print(f"wall-time ratio archive/siril (best runs): {ratio:.2f} (target <= 2): {'met' if ratio <= 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
