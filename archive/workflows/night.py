"""The nightly loop: find last night's folders, ingest, build masters, reduce, stack, summarize.

``run_night`` does what GeSS's loop mode does after each night, each step over all the
night's folders before the next (one folder's lights may need the masters of another folder's
calibrations):

1. ingest each folder (:func:`archive.ingest.ingest_paths`);
2. plate-solve the lights without a WCS (:func:`archive.reduce.solve.solve_frames`), when
   ``[sky.solve] in_night`` is on and solve-field is installed (else the summary says so);
3. build the masters the raw calibrations make, once per observing night found in the folders
   and their bad-pixel masks (:func:`archive.calib.masters.build_masters`; counted in the first
   folder of that night);
4. measure the raw calibrations and the new masters (:mod:`archive.reduce.quality_measure`);
5. calibrate every light of each folder, measure it on its calibrated frame, register and
   stack its groups, leaving out rejected lights (:func:`archive.reduce.pipeline.reduce_lights`);
6. write the night report of each observing night of the folders' raw frames into the
   products folder (:func:`archive.reports.night_html.report_path`).

A failure in one folder or group is recorded in the summary and the loop goes on. Every step
is idempotent (unchanged files are not re-read, finished reductions are not redone), so a
second run does nothing and an interrupted run is completed by the next one; temporary files
of writers that were killed are removed first.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func

from archive.calib.library import default_library
from archive.calib.masters import build_masters
from archive.calib.quality import QualityRules, load_quality_rules
from archive.calib.rules import RuleBook, default_rulebook
from archive.config import Settings, load_settings
from archive.db.frames import FrameFilter, frame_query, lights_under
from archive.db.models import CALIBRATION_KINDS, LIBRARY_KINDS, RAW_TYPES, Frame
from archive.db.session import session_scope
from archive.errors import ConfigError
from archive.files import remove_partials
from archive.ingest.ingest import ingest_paths
from archive.ingest.products import ProductRun
from archive.progress import NoProgress, Progress
from archive.reduce.config import ReductionConfig, load_reduction_config
from archive.reduce.executor import SerialExecutor
from archive.reduce.pipeline import reduce_lights
from archive.reduce.solve import SolverNotFoundError, solve_frames
from archive.reduce.quality_measure import measure_frames
from archive.reduce.summary import ReduceSummary
from archive.db.sky import has_wcs_condition
from archive.ingest.sky_config import SkyConfig, load_sky_config
from archive.reduce.preview import write_preview
from archive.reports.night import night_summary
from archive.reports.night_html import report_path, write_night_html

log = logging.getLogger(__name__)


def default_searches(formats: Sequence[str], today: dt.date | None = None) -> list[str]:
    """Last night's date (yesterday, local time) in each of ``formats`` (strftime)."""
    night = (today or dt.date.today()) - dt.timedelta(days=1)
    return list(dict.fromkeys(night.strftime(f) for f in formats))


def night_searches(search: str, formats: Sequence[str]) -> list[str]:
    """``search``, and when it is a date in one of ``formats`` (strftime), that date in every
    one of them: ``20250601`` also finds ``2025-06-01`` and ``2025_06_01``.

    A date is recognized only when the whole of ``search`` parses (``2025-06`` stays as it is).
    """
    for fmt in formats:
        try:
            date = dt.datetime.strptime(search, fmt).date()
        except ValueError:
            continue
        return list(dict.fromkeys([search] + [date.strftime(f) for f in formats]))
    return [search]


def find_folders(root: Path, searches: Sequence[str], exclude: Sequence[Path] = ()) -> list[Path]:
    """Folders under ``root`` whose path (relative to ``root``) contains one of ``searches``.

    Only the top-most matching folders are returned (their sub-folders are ingested with
    them); hidden folders and the folders in ``exclude`` (the products, the master library)
    are skipped. Sorted by path.

    Raises
    ------
    ConfigError
        ``root`` is not a folder.
    """
    if not root.is_dir():
        raise ConfigError(f"the imaging root {root} is not a folder (set [night] imaging_root or --root)")
    excluded = {p.absolute() for p in exclude}
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror)
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if path.absolute() in excluded:
                continue
            relative = path.relative_to(root).as_posix()
            if any(s in relative for s in searches):
                found.append(path)
            else:
                stack.append(path)
    return sorted(found)


@dataclass
class FolderResult:
    """What the loop did with one folder."""

    folder: str
    ingested_new: int = 0
    masters_built: int = 0
    masters: list[str] = field(default_factory=list)  # paths of the masters built
    lights: int = 0
    solved: int = 0
    not_solved: list[tuple[str, str]] = field(default_factory=list)
    reduction: ReduceSummary = field(default_factory=ReduceSummary)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing failed in this folder."""
        return not self.failures and self.reduction.ok


@dataclass
class NightSummary:
    """What ``run_night`` did (or, with ``dry_run``, would do)."""

    searches: list[str]
    folders: list[FolderResult] = field(default_factory=list)
    products_root: str = ""  # where the products of the run go (``[output] root``)
    removed_partials: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)  # paths of the night reports written
    #: The step before which the run was stopped (``should_stop``), or None when it ran to the end.
    stopped_before: str | None = None

    @property
    def ok(self) -> bool:
        """Every folder went through without a failure."""
        return all(f.ok for f in self.folders)


@contextmanager
def _recorded(result: FolderResult, step: str) -> Iterator[None]:
    """Record an error of ``step`` (of ``result``'s folder) in the result; the loop goes on."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - one folder's failure is recorded, the others go on
        log.exception("%s failed", step)
        result.failures.append((step, f"{type(exc).__name__}: {exc}"))


def _masters_library(settings: Settings) -> Path:
    return default_library(settings).expanduser().absolute()


def run_night(
    engine: Engine,
    search: str | None = None,
    *,
    config: ReductionConfig | None = None,
    settings: Settings | None = None,
    executor: Executor | None = None,
    rules: RuleBook | None = None,
    dry_run: bool = False,
    today: dt.date | None = None,
    progress: Progress | None = None,
    measure: bool = True,
    folders: Sequence[Path] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> NightSummary:
    """Ingest, build masters, reduce and stack every folder of the night matching ``search``.

    Parameters
    ----------
    engine : Engine
    search : str, optional
        A piece of folder path to look for under the imaging root; a date in one of
        ``[night] date_formats`` is looked for in each of them (:func:`night_searches`);
        default last night's date in each (e.g. 2026-11-20, 20261120).
    config, settings : optional
        Default: the layered configuration.
    executor : Executor, optional
        Where pixel work runs (default in this process; the CLI passes a process pool).
    rules : RuleBook, optional
        Matching rules of the master library.
    dry_run : bool
        Only find the folders and count what is in them; nothing is written.
    today : date, optional
        For the default search (tests).
    progress : Progress, optional
    measure : bool
        Measure and judge the night's frames (:mod:`archive.reduce.quality_measure`): the raw
        calibrations and the masters built after the masters step, the lights on their
        calibrated frames before registration (default True).
    folders : sequence of Path, optional
        Process these folders (each walked recursively) instead of searching the imaging root
        for ``search`` (``archive watch`` passes the folder whose sequence settled); no imaging
        root is needed then.
    should_stop : callable, optional
        Asked before each step (ingest, solve, masters and reduction); when it returns True the
        run returns at once with ``stopped_before`` set to the step not started. Every step is
        idempotent, so a later run over the same folders completes the work.

    Returns
    -------
    NightSummary
        Failures are recorded per folder; nothing is raised for a failing folder.

    Raises
    ------
    ConfigError
        No imaging root is configured, or it is not a folder (without ``folders``).
    """
    settings = settings or load_settings()
    config = config or load_reduction_config(settings)
    rules = rules if rules is not None else default_rulebook(settings)
    executor = executor or SerialExecutor()
    progress = progress or NoProgress()
    should_stop = should_stop or (lambda: False)
    library = _masters_library(settings)
    products = config.products_root()
    if folders is not None:
        searches = [str(f) for f in folders]
        folders = [Path(f).absolute() for f in folders]
    else:
        if config.imaging_root is None:
            raise ConfigError("no imaging root: set [night] imaging_root in the configuration, ARCHIVE_IMAGING_ROOT "
                              "or --root")
        searches = night_searches(search, config.date_formats) if search else default_searches(config.date_formats,
                                                                                                 today)
        folders = find_folders(config.imaging_root, searches, exclude=[products, library])
    summary = NightSummary(searches=searches, dry_run=dry_run, products_root=str(products))
    if dry_run:
        for folder in folders:
            result = FolderResult(str(folder))
            with session_scope(engine) as session:
                result.lights = len(lights_under(session, folder))
            summary.folders.append(result)
        return summary
    summary.removed_partials = remove_partials(products) + remove_partials(library)
    # Step by step over all folders: one folder's lights may need the masters of another
    # folder's calibrations (lights under the target, calibrations under their own folder).
    results = {folder: FolderResult(str(folder)) for folder in folders}
    summary.folders = list(results.values())
    nights: dict[dt.date, Path] = {}  # night of raw calibrations -> the first folder holding some
    for folder, result in results.items():
        if should_stop():
            summary.stopped_before = f"ingest {folder}"
            return summary
        with _recorded(result, f"ingest {folder}"):
            ingested = ingest_paths(engine, [folder], settings=settings, progress=progress)
            result.ingested_new = ingested.new + ingested.changed
            result.failures += [(f"ingest {path}", reason) for path, reason in ingested.problems]
            with session_scope(engine) as session:
                query = frame_query(FrameFilter(folder=folder), Frame.night).where(
                    Frame.night.is_not(None), Frame.image_type.in_(CALIBRATION_KINDS))
                for night in session.scalars(query.distinct()):
                    nights.setdefault(night, folder)
    if should_stop():
        summary.stopped_before = "solve"
        return summary
    sky = load_sky_config(settings)
    _solve(engine, results, settings, sky, summary)
    if should_stop():
        summary.stopped_before = "masters"
        return summary
    # the products of the run join two ingest runs: the masters', the reduction's
    master_run = ProductRun(engine, library, settings, sky=sky)
    product_run = ProductRun(engine, products, settings, sky=sky)
    with master_run, product_run:
        stopped = _masters_and_reduction(engine, nights, results, config, settings, rules, library, executor,
                                         progress, master_run, product_run, measure, should_stop)
    summary.stopped_before = stopped
    if stopped is None and should_stop():
        summary.stopped_before = "night report"
    elif stopped is None:
        _write_reports(engine, results, rules, load_quality_rules(settings=settings), products, summary)
    return summary


def _write_reports(engine: Engine, results: dict[Path, FolderResult], rules: RuleBook, quality_rules: QualityRules,
                   products: Path, summary: NightSummary) -> None:
    """Write the night report (:mod:`archive.reports.night_html`) of every observing night of
    the raw frames under the folders, into the products folder; a failure is the first
    folder's."""
    if not results:
        return
    first = next(iter(results.values()))
    with _recorded(first, "night report"):
        with session_scope(engine) as session:
            nights: set[dt.date] = set()
            for folder in results:
                query = frame_query(FrameFilter(folder=folder), Frame.night).where(
                    Frame.night.is_not(None), Frame.image_type.in_(RAW_TYPES))
                nights.update(session.scalars(query.distinct()))
            for night in sorted(nights):
                report = night_summary(session, night, rules=rules, quality_rules=quality_rules, folders=list(results))
                summary.reports.append(str(write_night_html(report, report_path(products, night))))


def _solve(engine: Engine, results: dict[Path, FolderResult], settings: Settings, sky: SkyConfig,
           summary: NightSummary) -> None:
    """Plate-solve each folder's lights that have no WCS (``[sky.solve] in_night``)."""
    if not sky.solve_in_night:
        return
    for folder, result in results.items():
        filters = FrameFilter(folder=folder, image_type="light")
        with session_scope(engine) as session:
            unsolved = session.scalar(frame_query(filters, func.count(Frame.id)).where(~has_wcs_condition()))
        if not unsolved:
            continue
        with _recorded(result, f"solve {folder}"):
            try:
                solved = solve_frames(engine, filters, config=sky, settings=settings)
            except SolverNotFoundError as exc:
                summary.notes.append(f"{unsolved} light(s) of {folder} have no WCS and were not solved: {exc}")
                continue
            result.solved += len(solved.solved)
            result.not_solved += solved.failed


def _masters_and_reduction(engine, nights, results, config, settings, rules, library, executor, progress,
                           master_run: ProductRun, product_run: ProductRun, measure: bool = True,
                           should_stop: Callable[[], bool] = lambda: False) -> str | None:
    """Masters, measurement and reduction; the step before which ``should_stop`` stopped it, or None."""
    built_ids: list[int] = []
    for night, folder in sorted(nights.items()):
        result = results[folder]
        with _recorded(result, f"masters of night {night}"):
            built = build_masters(engine, filters=FrameFilter(night=night), kinds=LIBRARY_KINDS, rules=rules,
                                  library=library, settings=settings, progress=progress, products=master_run)
            result.masters_built += len(built.built)
            result.masters += [path for _kind, _frame_id, path in built.built]
            built_ids += [frame_id for _kind, frame_id, _path in built.built]
            if config.previews:
                for _kind, _frame_id, path in built.built:
                    write_preview(path)
            result.failures += [(f"master {kind} {what}", why) for kind, what, why in built.failed]
    if should_stop():
        return "measure"
    if measure and results:
        first = next(iter(results.values()))
        with _recorded(first, "measure calibrations and masters"):
            with session_scope(engine) as session:
                ids = set(built_ids)
                for folder in results:
                    ids.update(session.scalars(frame_query(FrameFilter(folder=folder, include_duplicates=False),
                                                           Frame.id).where(Frame.image_type.in_(CALIBRATION_KINDS))))
            measured = measure_frames(engine, sorted(ids), executor=executor, progress=progress)
            first.failures += [(f"measure {what}", why) for what, why in measured.failed]
    for folder, result in results.items():
        if should_stop():
            return f"reduce {folder}"
        with _recorded(result, f"reduce {folder}"):
            with session_scope(engine) as session:
                light_ids = lights_under(session, folder)
            result.lights = len(light_ids)
            result.reduction = reduce_lights(engine, light_ids, config=config, settings=settings, executor=executor,
                                             rules=rules, progress=progress, products=product_run, measure=measure)
    return None
