"""Plate solving: a WCS for every light that has none, with astrometry.net's ``solve-field``.

Each frame is a reduction of step ``solve`` (its provenance: the light as input, the hints
and solver parameters, the software versions, the host), claimed and finished through
:mod:`archive.db.provenance` like every product. The solver reads the catalogued file and
writes into a temporary folder: the raw file is never modified. The solution's WCS is kept
beside the catalogue, in ``footprints.wcs_header`` with source ``solved`` and the reduction's
id, and replaces the frame's estimated footprint. A frame that does not solve keeps what it
had (an estimate, or nothing); its reduction is ``failed`` with the solver's reason, and the
next ``archive solve`` tries again.

Hints (Lang et al. 2010, AJ 139, 1782: a scale range and a search cone make the search
fast): the pointing RA/Dec within ``search_radius_deg``, and the plate scale from focal length
and pixel size within ``scale_tolerance``. The index files are Debian's astrometry-data-tycho2
(fields wider than about 20 arcmin).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits
from sqlalchemy import Engine, select

from archive.config import Settings, load_settings
from archive.db.frames import FrameFilter, canonical_paths, frame_query
from archive.db.models import Footprint, Frame
from archive.db.provenance import fingerprint, finish_reduction, start_reduction
from archive.db.session import session_scope
from archive.db.sky import has_wcs_condition, store_footprints
from archive.errors import ArchiveError
from archive.ingest.sky import celestial_wcs, index_missing, parse_header, plate_scale, wcs_footprint
from archive.ingest.sky_config import SkyConfig, load_sky_config
from archive.progress import NoProgress, Progress

log = logging.getLogger(__name__)

STEP = "solve"


class SolverNotFoundError(FileNotFoundError, ArchiveError):
    """astrometry.net's solve-field is not installed (or not on PATH)."""


def solver_path(config: SkyConfig | None = None) -> str | None:
    """The solve-field executable, or None when it is not installed."""
    return shutil.which((config or load_sky_config()).solver)


@functools.lru_cache(maxsize=4)
def _version(solver: str) -> str:
    try:
        done = subprocess.run([solver, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


def solver_version(config: SkyConfig | None = None) -> str | None:
    """The installed astrometry.net version (``solve-field --version``), None when not installed."""
    path = solver_path(config)
    return _version(path) if path else None


@dataclass
class SolveSummary:
    """What one ``solve_frames`` did.

    Attributes
    ----------
    solved : list of (frame id, path)
        Frames solved now.
    failed : list of (path, reason)
        Frames the solver could not solve (their reduction is ``failed``).
    skipped : int
        Frames already solved by an earlier run, or being solved by another process.
    too_narrow : int
        Frames whose field (from the plate scale) is narrower than ``min_field_arcmin``: the
        index files cannot match them, so they are not tried.
    indexed : int
        Footprints added from headers (frames catalogued before footprints existed).
    """

    solved: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    too_narrow: int = 0
    indexed: int = 0

    def lines(self) -> list[str]:
        """The summary for people."""
        out = [f"{len(self.solved)} frame(s) solved, {len(self.failed)} not solved, {self.skipped} skipped"
               + (f", {self.too_narrow} too narrow for the index files" if self.too_narrow else "")
               + (f", {self.indexed} footprint(s) read from headers" if self.indexed else "")]
        out += [f"  not solved: {path}: {reason}" for path, reason in self.failed]
        return out


def _parameters(row: Any, scale: float | None, config: SkyConfig) -> dict[str, Any]:
    """The hints and solver settings of one frame (the reduction's parameters)."""
    return {
        "ra_deg": row.ra_deg, "dec_deg": row.dec_deg,
        "search_radius_deg": config.search_radius_deg if row.ra_deg is not None else None,
        "scale_arcsec": round(scale, 6) if scale else None,
        "scale_tolerance": config.scale_tolerance if scale else None,
        "downsample": config.downsample, "objects": config.objects, "cpu_limit_s": config.cpu_limit_s,
    }


def solve_command(solver: str, path: str, workdir: Path, params: dict[str, Any]) -> list[str]:
    """The solve-field command line for one file (outputs in ``workdir`` only: the raw file is read)."""
    command = [solver, "--no-plots", "--overwrite", "--dir", str(workdir), "--out", "solution",
               "--downsample", str(params["downsample"]), "--objs", str(params["objects"]),
               "--cpulimit", str(params["cpu_limit_s"]), "--new-fits", "none", "--corr", "none",
               "--rdls", "none", "--match", "none", "--index-xyls", "none", "--solved", "none", "--temp-axy"]
    if params["ra_deg"] is not None and params["dec_deg"] is not None:
        command += ["--ra", str(params["ra_deg"]), "--dec", str(params["dec_deg"]),
                    "--radius", str(params["search_radius_deg"])]
    if params["scale_arcsec"]:
        low = params["scale_arcsec"] * (1 - params["scale_tolerance"])
        high = params["scale_arcsec"] * (1 + params["scale_tolerance"])
        command += ["--scale-units", "arcsecperpix", "--scale-low", f"{low:.6f}", "--scale-high", f"{high:.6f}"]
    return command + [path]


def run_solver(solver: str, path: str, params: dict[str, Any]) -> fits.Header:
    """Run solve-field on ``path`` and return the solution's WCS header.

    Raises
    ------
    RuntimeError
        The solver found no solution, failed, or ran out of time; the message says which.
    """
    with tempfile.TemporaryDirectory(prefix="archive-solve-") as tmp:
        workdir = Path(tmp)
        command = solve_command(solver, path, workdir, params)
        log.info("solving %s", path)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=3 * params["cpu_limit_s"] + 60,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"solve-field ran longer than {exc.timeout:.0f} s") from exc
        solution = workdir / "solution.wcs"
        if not solution.is_file():
            last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-1:] or ["no output"]
            reason = "no solution" if done.returncode == 0 else f"solve-field exited with status {done.returncode}"
            raise RuntimeError(f"{reason} ({last[0].strip()[:200]})")
        return fits.getheader(solution)


def solve_frames(
    engine: Engine,
    filters: FrameFilter | None = None,
    *,
    config: SkyConfig | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> SolveSummary:
    """Plate-solve the lights (matching ``filters``) that have no WCS.

    Footprints missing for frames catalogued earlier are first read from their headers; the
    frames whose footprint is still not from a WCS (estimated, or none) are then solved one
    by one, each a ``solve`` reduction committed on its own.

    Parameters
    ----------
    engine : Engine
    filters : FrameFilter, optional
        Which frames; the image type defaults to ``light``.
    config : SkyConfig, optional
        Solver settings (default ``configs/sky.toml`` and the user's ``[sky]``).
    settings : Settings, optional
    progress : Progress, optional

    Returns
    -------
    SolveSummary

    Raises
    ------
    SolverNotFoundError
        solve-field is not installed (nothing is solved; footprints from headers are still added).
    """
    settings = settings or load_settings()
    config = config or load_sky_config(settings)
    progress = progress or NoProgress()
    f = filters or FrameFilter()
    if f.image_type is None:
        f = FrameFilter(**{**f.__dict__, "image_type": "light"})
    summary = SolveSummary()
    with session_scope(engine, write=True) as session:
        summary.indexed = index_missing(session, f, config)
    solver = solver_path(config)
    if solver is None:
        raise SolverNotFoundError(f"{config.solver} is not installed: apt-get install astrometry.net "
                                  "astrometry-data-tycho2 (frames without a WCS keep estimated footprints)")
    columns = (Frame.id, Frame.sha256, Frame.ra_deg, Frame.dec_deg, Frame.naxis1, Frame.naxis2, Frame.binning_x,
               Frame.header)
    with session_scope(engine) as session:
        rows = session.execute(frame_query(f, *columns).where(~has_wcs_condition()).order_by(Frame.id)).all()
        paths = canonical_paths(session, [r.id for r in rows])
        estimates = dict(session.execute(select(Footprint.frame_id, Footprint.pixel_scale_arcsec).where(
            Footprint.frame_id.in_([r.id for r in rows]))).all()) if rows else {}
    claimed = [c for c in (_claim(engine, row, paths.get(row.id), estimates.get(row.id), config, summary)
                           for row in rows) if c is not None]
    progress.start(len(claimed), "solving")
    workers = max(1, min(len(claimed), settings.workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # each solve-field is a process of its own
        futures = {pool.submit(_run, solver, path, params): (row, path, reduction_id)
                   for row, path, params, reduction_id in claimed}
        for future in as_completed(futures):
            row, path, reduction_id = futures[future]
            _record(engine, row, path, reduction_id, future.result(), summary)
            progress.advance()
    progress.finish()
    summary.solved.sort()
    return summary


def _claim(engine: Engine, row: Any, path: str | None, estimate: float | None, config: SkyConfig,
           summary: SolveSummary) -> tuple[Any, str, dict[str, Any], int] | None:
    """Claim the ``solve`` reduction of one frame (committed); None when there is nothing to do."""
    if path is None:
        summary.failed.append((f"frame {row.id}", "no current file"))
        return None
    scale = estimate or plate_scale(parse_header(row.header), row.binning_x, config)
    if scale and row.naxis1 and row.naxis2 and max(row.naxis1, row.naxis2) * scale / 60.0 < config.min_field_arcmin:
        summary.too_narrow += 1
        return None
    params = _parameters(row, scale, config)
    fp = fingerprint(STEP, [(row.sha256, "light")], params, None)
    with session_scope(engine, write=True) as session:
        reduction = start_reduction(session, STEP, fp, params, None, [(row.id, "light")])
        reduction_id = reduction.id if reduction is not None else None
        if reduction is not None:
            reduction.software = {**reduction.software, "astrometry.net": solver_version(config)}
    if reduction_id is None:
        summary.skipped += 1
        return None
    return row, path, params, reduction_id


def _run(solver: str, path: str, params: dict[str, Any]) -> fits.Header | Exception:
    """The solution's header, or the error that says why there is none (in a thread)."""
    try:
        return run_solver(solver, path, params)
    except (RuntimeError, OSError, ValueError) as exc:
        return exc


def _record(engine: Engine, row: Any, path: str, reduction_id: int, result: fits.Header | Exception,
            summary: SolveSummary) -> None:
    """Store a solution as the frame's footprint and finish its reduction (or mark it failed)."""
    try:
        if isinstance(result, Exception):
            raise result
        wcs = celestial_wcs(result)
        if wcs is None:
            raise RuntimeError("the solution has no celestial WCS")
        footprint = wcs_footprint(wcs, row.naxis1, row.naxis2)
    except (RuntimeError, OSError, ValueError) as exc:
        with session_scope(engine, write=True) as session:
            finish_reduction(session, reduction_id, status="failed", message=str(exc), failure_kind="error")
        summary.failed.append((path, str(exc)))
        log.info("%s not solved: %s", path, exc)
        return
    with session_scope(engine, write=True) as session:
        store_footprints(session, [{"frame_id": row.id, **footprint, "source": "solved", "reduction_id": reduction_id,
                                    "wcs_header": wcs.to_header(relax=True).tostring(sep="\n")}])
        centre = wcs.celestial.pixel_to_world_values((row.naxis1 - 1) / 2.0, (row.naxis2 - 1) / 2.0)
        finish_reduction(session, reduction_id, results={
            "ra_deg": float(centre[0]), "dec_deg": float(centre[1]),
            "pixel_scale_arcsec": round(footprint["pixel_scale_arcsec"], 6)})
    summary.solved.append((row.id, path))
