"""Benchmark: the 17 Seestar S50 colour lights demosaiced, registered and stacked, archive against Siril.

Run from the repository root::

    python benchmarks/bench_colour.py [--workers 2] [--repeat 2] [--no-catalogue]

The set is ../shared/data/seestar-s50-m94 (two nights, two units, 1080x1920 Bayer GRBG
mosaics, no calibration frames: the lights go straight to demosaicing). Each side runs in a
fresh child process so that peak memory is measured per side (``ru_maxrss`` from ``wait4``: the
largest process of the side's tree):

* archive (pixels): the functions ``archive reduce`` runs, in a process pool of ``--workers``:
  the Bayer pattern normalized from each header by the dialects, "calibration" with no master
  then bilinear demosaicing (colour-demosaicing) into a (3, ny, nx) cube, star detection on the
  luminance, reference choice, astroalign registration with the configured acceptance
  (``[register]``), each plane warped, and a median stack a plane at a time through the combine
  engine, written as NAXIS3 = 3;
* archive (catalogue): the same through the command line with a fresh SQLite catalogue,
  ``archive ingest`` then ``archive reduce --workers N`` (products ingested, provenance
  recorded); skipped with ``--no-catalogue``;
* Siril (``siril-cli``, Debian package ``siril`` 1.0.6): a script ``convert light -debayer``
  (reads the mosaics, debayers by the header's BAYERPAT), ``register`` (global star alignment,
  ``setfindstar 0.5 0.5`` and ``-minpairs=4`` so that it registers every frame of both nights,
  as archive does), ``stack ... med -nonorm`` (median, no normalization, as archive's stack);
  run as ``siril-cli -s script.ssf -d workdir``. When it is not installed the script says so
  and reports archive alone.

Each side runs ``--repeat`` times, alternating; the best wall time of each is compared (the
machine is shared, so every run is printed too). Prints wall times, peak memory and the
ratio archive/Siril (target: within 3x).
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "seestar-s50-m94"


def lights() -> list[Path]:
    return sorted(DATA.glob("session*/*.fit"))


def run_archive(folder: Path, workers: int) -> None:
    """The archive side (in its own process): demosaic, detect, choose reference, register, stack."""
    sys.path.insert(0, str(ROOT))
    from astropy.io import fits

    from archive.ingest.dialects import DialectSet
    from archive.ingest.normalize import normalize_header
    from archive.reduce.align import RegistrationJob, choose_reference, count_stars, register_file
    from archive.reduce.calibrate import CalibrationJob, calibrate_light_file
    from archive.reduce.config import load_reduction_config
    from archive.reduce.executor import make_executor
    from archive.reduce.registration import registration_parameters
    from archive.reduce.stack import StackJob, stack_files

    out = folder / "archive_out"
    out.mkdir(exist_ok=True)
    config = load_reduction_config()
    p = registration_parameters(config.register)
    dialects = DialectSet()
    jobs = []
    for i, light in enumerate(lights()):
        pattern = normalize_header(fits.getheader(light), dialects).values["bayer_pattern"]
        jobs.append(CalibrationJob(light=str(light), output=str(out / f"cal_{i:05d}.fits"), bayer_pattern=pattern,
                                   demosaic=config.calibrate.get("demosaic", "bilinear")))
    with make_executor("process" if workers > 1 else "serial", workers) as pool:
        calibrated = [r["output"] for r in pool.map(calibrate_light_file, jobs)]
        stars = list(pool.map(count_stars, calibrated, [p["detect_sigma"]] * len(calibrated),
                              [p["max_control_points"]] * len(calibrated), [p["min_fwhm_px"]] * len(calibrated),
                              [p["min_pixels"]] * len(calibrated)))
        reference = choose_reference([(s["path"], s["n_stars"]) for s in stars])
        ref_xy = next(s["xy"] for s in stars if s["path"] == reference)[: p["max_control_points"]]
        reg_jobs = [RegistrationJob(source=s["path"], output=str(out / f"reg_{i:05d}.fits"), reference=reference,
                                    source_xy=s["xy"][: p["max_control_points"]], reference_xy=ref_xy,
                                    max_control_points=p["max_control_points"], min_matches=p["min_matches"],
                                    max_residual_px=p["max_residual_px"], min_fwhm_px=p["min_fwhm_px"],
                                    min_pixels=p["min_pixels"])
                    for i, s in enumerate(stars)]
        results = list(pool.map(register_file, reg_jobs))
        ok = [r["output"] for r in results if r["ok"]]
        headers = [fits.getheader(path) for path in ok]  # what the catalogue would hand the stack
        stack = stack_files(StackJob(inputs=tuple(ok), output=str(out / "stack.fits"), method="median",
                                     exposures_s=tuple(float(h["EXPTIME"]) for h in headers),
                                     dates_obs=tuple(h["DATE-OBS"] for h in headers)),
                            executor=pool, parts=workers)
    shape = fits.getdata(stack["output"]).shape
    print(json.dumps({"registered": len(ok), "rejected": len(results) - len(ok), "ncombine": stack["ncombine"],
                      "shape": list(shape)}))


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, int, str]:
    """Run ``command``; wall time (s), peak RSS (MB, largest process), exit status, output."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), output


def siril_setup(folder: Path, workers: int) -> Path:
    """The lights linked under plain names into ``folder/raw`` and the Siril script."""
    raw, work = folder / "raw", folder / "work"
    raw.mkdir()
    work.mkdir()
    for i, light in enumerate(lights(), 1):
        os.symlink(light, raw / f"seestar_{i:05d}.fit")
    script = folder / "run.ssf"
    script.write_text(f"requires 1.0.0\nsetcpu {workers}\ncd {raw}\nconvert light -debayer -out={work}\n"
                      f"cd {work}\nsetfindstar 0.5 0.5\nregister light_ -minpairs=4\n"
                      f"stack r_light_ med -nonorm -out={work / 'stack_siril'}\n")
    return script


def _best(runs: list[tuple[float, float, str]]) -> str:
    wall, rss, note = min(runs)
    return f"best {wall:.2f} s (all: {', '.join(f'{w:.2f}' for w, _, _ in runs)}), peak RSS {rss:.0f} MB  {note}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="Runs per side (the best is reported).")
    parser.add_argument("--no-catalogue", action="store_true", help="Skip the archive ingest + reduce run.")
    parser.add_argument("--archive-side", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.archive_side:
        run_archive(Path(args.archive_side), args.workers)
        return 0
    if not DATA.is_dir():
        print(f"{DATA}: the Seestar set is missing")
        return 1
    siril = shutil.which("siril-cli")
    archive_cli = shutil.which("archive") or ""
    pixels, catalogue, theirs = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_colour_") as tmp:
        for run in range(args.repeat):  # alternate the sides; keep each side's best run
            folder = Path(tmp) / f"run{run}"
            folder.mkdir()
            wall, rss, code, output = timed([sys.executable, __file__, "--archive-side", str(folder),
                                             "--workers", str(args.workers)], folder)
            if code:
                print(output)
                return 1
            pixels.append((wall, rss, output.strip().splitlines()[-1]))
            if not args.no_catalogue and archive_cli:
                db = folder / "catalogue.sqlite"
                env = {"XDG_DATA_HOME": str(folder / "home"), "XDG_CONFIG_HOME": str(folder / "home")}
                start = time.perf_counter()
                w1, r1, c1, o1 = timed([archive_cli, "-q", "--db", str(db), "ingest", str(DATA)], folder, env)
                w2, r2, c2, o2 = timed([archive_cli, "-q", "--db", str(db), "reduce", "--output", str(folder / "products"),
                                        "--workers", str(args.workers)], folder, env)
                if c1 or c2:
                    print(o1[-2000:], o2[-2000:])
                    return 1
                stacks = list((folder / "products" / "stacks").rglob("*.fits"))
                catalogue.append((time.perf_counter() - start, max(r1, r2),
                                  f"ingest {w1:.2f} s + reduce {w2:.2f} s, {len(stacks)} stack(s)"))
            if siril:
                sdir = folder / "siril"
                sdir.mkdir()
                script = siril_setup(sdir, args.workers)
                s_wall, s_rss, s_code, s_output = timed([siril, "-s", str(script), "-d", str(sdir)], sdir)
                stacked = [line for line in s_output.splitlines() if "images have been stacked" in line]
                if s_code or not list((sdir / "work").glob("stack_siril*")):
                    print(f"Siril failed (exit {s_code}):\n{s_output[-2000:]}")
                    return 1
                registered = [line for line in s_output.splitlines() if "registered" in line and "Total" in line]
                theirs.append((s_wall, s_rss, "; ".join(x.removeprefix("log: ").strip()
                                                         for x in registered[-1:] + stacked[-1:])))
        print(f"{len(lights())} Seestar S50 lights, 1080x1920 GRBG, {args.workers} workers, {args.repeat} run(s) per side")
        print(f"archive, demosaic + register + stack (pixel functions): {_best(pixels)}")
        if catalogue:
            print(f"archive, ingest + reduce with a SQLite catalogue (CLI):  {_best(catalogue)}")
        if not siril:
            print("Siril (siril-cli) is not installed: apt-get install -y siril; no comparison made.")
            return 0
        version = subprocess.run([siril, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        print(f"{version}, convert -debayer + register + stack (script):   {_best(theirs)}")
        s_wall = min(theirs)[0]
        for label, runs in (("pixel functions", pixels), ("ingest + reduce", catalogue)):
            if runs:
                ratio = min(runs)[0] / s_wall
                print(f"wall-time ratio archive ({label}) / siril: {ratio:.2f} (target <= 3): "
                      f"{'met' if ratio <= 3 else 'NOT met'}; peak RSS ratio {min(runs)[1] / min(theirs)[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
