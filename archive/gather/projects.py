"""Multi-night projects: a target's lights per filter, their masters, and the integration so far.

A project (:class:`archive.db.projects.Project`) is a stored query: a target (matched loosely
by name and by position, as in copyback) and/or a place on the sky (the footprint filters
``cone`` and ``covers`` of :class:`archive.db.frames.FrameFilter`, as ``archive frames``), a
list of filters, an optional DATE-OBS range and a goal of integration per filter. Collecting writes dss-automation's layout below the project's
folder::

    <project>/lights/<filter>/<date_obs>_<exposure>s_<seq>.fits
    <project>/masters/<filter>/<master_type>_<date_obs>_<exposure>s_<seq>.fits
    <project>/superlum.txt           (with --super-luminance: every L, R, G, B light)

with the copyback machinery (one file per exposure, verified, recorded, never overwritten),
so collecting again after a new night adds only the new frames. Folder and name templates
are in ``configs/copyback.toml`` (``[project]``).

Masters: the master library's selection (:func:`archive.calib.select_sql.select_masters`, the
matching rules of ``configs/matching``) chooses, for every light, its masters, as calibration
does; the union per filter is collected, with the masters they were made with
(:func:`archive.db.provenance.masters_below`: the master bias of a bias-subtracted master
dark), and the bad-pixel mask calibration would apply to it, so that the project folder can
calibrate its own lights. A light is *usable* when every
kind its instrument requires (:func:`archive.calib.required.required_for_lights`, ``required``
of configs/matching: none for a smart telescope, bias and flat for a CCD without darks) has a
valid master (not flagged bad, within validity), the light is not a duplicate exposure and its
quality verdict is not rejected. Only current products are gathered (none superseded).

A collect holds the project folder's lock (:func:`archive.gather.destination.hold_destination`)
from its start to its end, so two collects of one project never copy an exposure twice.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from archive.calib.required import required_for_lights
from archive.calib.rules import RuleBook, default_rulebook
from archive.calib.select import explain_selection, masters_of
from archive.calib.select_sql import select_masters
from archive.config import Settings, load_settings
from archive.db.base import utcnow
from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, folder_prefix, frame_query
from archive.db.nights import frames_by_id
from archive.db.models import BADPIX, LIBRARY_KINDS, Copy, Frame
from archive.db.provenance import masters_below
from archive.db.projects import Project, ProjectGoal
from archive.db.session import session_scope
from archive.errors import ProjectError
from archive.reduce.integration import integrate, rejected_ids
from archive.reduce.quality import verdicts
from archive.files import fsync_dir, render_path, safe_component, temporary_path
from archive.gather.config import GatherConfig, load_gather_config
from archive.gather.copyback import MODES, CopybackSummary, execute_plan, plan_copyback
from archive.gather.destination import hold_destination, recover_destination
from archive.gather.exposures import ExposureSelection, Selection, frame_rows, select_exposures
from archive.progress import Progress

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([hms]?)\s*$", re.IGNORECASE)
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str, *, unit_required: bool = False) -> float:
    """``'10h'``, ``'90m'``, ``'3600s'`` or ``'3600'`` (seconds) -> seconds.

    Parameters
    ----------
    unit_required : bool
        Refuse a bare number (is ``90`` minutes or seconds?).

    Raises
    ------
    ValueError
        Not a number with an h, m or s unit (optional unless ``unit_required``).
    """
    match = _DURATION.match(str(text))
    if not match or (unit_required and not match.group(2)):
        raise ValueError(f"not a duration: {text!r} (say 10h, 90m or 30s)")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_goals(items: Iterable[str]) -> dict[str, float]:
    """``['Ha=10h', 'L=5h']`` -> ``{'Ha': 36000.0, 'L': 18000.0}`` (seconds).

    A goal needs its unit (h, m or s): ``Ha=90`` is refused rather than read as 90 s.

    Raises
    ------
    ValueError
        An item is not ``FILTER=DURATION`` with a unit.
    """
    goals: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip():
            raise ValueError(f"a goal is FILTER=DURATION (e.g. Ha=10h), not {item!r}")
        try:
            goals[name.strip()] = parse_duration(value, unit_required=True)
        except ValueError:
            raise ValueError(f"goal {item!r}: give the duration with its unit, e.g. {name.strip()}=10h, "
                             f"{name.strip()}=90m or {name.strip()}=30s") from None
    return goals


def create_project(
    session: Session,
    name: str,
    *,
    target: str | None = None,
    folder: str | Path,
    filters: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    goals: dict[str, float] | None = None,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    radius_arcmin: float | None = None,
    cone: tuple[float, float, float] | None = None,
    covers: tuple[float, float] | None = None,
) -> Project:
    """Create a project.

    Parameters
    ----------
    session : Session
    name : str
        Unique project name.
    target : str, optional
        Target, matched loosely ("M 31" = "M31") and by position (see copyback). Optional
        when ``cone`` or ``covers`` places the project on the sky.
    folder : str or Path
        The project's folder (stored absolute; created when collecting).
    filters : sequence of str
        Filters in order; empty for every filter found.
    since, until : datetime, optional
        ``since <= DATE-OBS < until`` (UTC).
    goals : dict, optional
        Filter -> wanted integration, s.
    ra_deg, dec_deg, radius_arcmin : float, optional
        Reference position (deg) and radius (arcmin) for position matching.
    cone : (ra_deg, dec_deg, radius_deg), optional
        Only lights whose footprint comes within the radius of the position (deg),
        :func:`archive.db.sky.cone_condition`.
    covers : (ra_deg, dec_deg), optional
        Only lights whose footprint contains the position (deg),
        :func:`archive.db.sky.covers_condition`.

    Raises
    ------
    ProjectError
        A project of that name exists, or neither a target nor ``cone``/``covers`` is given.
    SkyQueryError
        ``cone`` or ``covers`` is not a position on the sky (or the radius not in (0, 90) deg).
    """
    if not (target and target.strip()) and cone is None and covers is None:
        raise ProjectError(f"project {name!r}: give a target, a cone or a position it covers")
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise ProjectError(f"a project named {name!r} exists already")
    # numpy and astropy-healpix: imported on use
    from archive.db.sky import cone_condition, covers_condition

    if cone is not None:
        cone = tuple(float(v) for v in cone)
        cone_condition(*cone)  # checks the values
    if covers is not None:
        covers = tuple(float(v) for v in covers)
        covers_condition(*covers)
    project = Project(
        name=name, target=(target or "").strip(), filters=[f.strip() for f in filters if f.strip()], since=since,
        until=until, ra_deg=ra_deg, dec_deg=dec_deg, radius_arcmin=radius_arcmin,
        cone_ra_deg=cone[0] if cone else None, cone_dec_deg=cone[1] if cone else None,
        cone_radius_deg=cone[2] if cone else None, covers_ra_deg=covers[0] if covers else None,
        covers_dec_deg=covers[1] if covers else None,
        folder=str(Path(folder).expanduser().absolute()), created_at=utcnow(),
    )
    project.goals = [ProjectGoal(filter_name=f, goal_s=float(s)) for f, s in (goals or {}).items()]
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    """The project called ``name``.

    Raises
    ------
    ProjectError
        No such project (the message lists the known ones).
    """
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        known = session.scalars(select(Project.name).order_by(Project.name)).all()
        raise ProjectError(f"no project named {name!r}" + (f"; known: {', '.join(known)}" if known else ""))
    project.goals  # noqa: B018 - load while the session is open
    return project


def project_selection(project: Project) -> Selection:
    """The copyback :class:`Selection` of a project's raw lights (all its filters)."""
    return Selection(
        target=project.target or None, since=project.since, until=project.until, kind="raw",
        ra_deg=project.ra_deg, dec_deg=project.dec_deg, radius_arcmin=project.radius_arcmin,
        cone=project.cone, covers=project.covers,
    )


def sky_text(project: Project) -> str:
    """A project's place on the sky as its options say it: ``'cone 250.42 36.46 0.25; covers
    250.4 36.5'`` (deg), empty without one."""
    parts = [f"{kind} {' '.join(f'{v:g}' for v in values)}"
             for kind, values in (("cone", project.cone), ("covers", project.covers)) if values]
    return "; ".join(parts)


def _by_filter(project: Project, groups: ExposureSelection) -> dict[str, ExposureSelection]:
    """Split exposures by filter: the project's filters (case-insensitive) in order, or every one found."""
    wanted = {f.lower(): f for f in project.filters}
    out: dict[str, ExposureSelection] = {f: ExposureSelection() for f in project.filters}
    for group in groups.groups:
        name = group[0].filter_name
        if wanted:
            key = wanted.get((name or "").lower())
            if key is None:
                continue
        else:
            key = name or "none"
        out.setdefault(key, ExposureSelection()).groups.append(group)
    return out


def _folder(root: Path, template: str, filter_name: str, config: GatherConfig) -> Path:
    """A filter's folder below the project folder (``{filter}`` made safe; checked to stay below)."""
    return render_path(root, template, filter=safe_component(filter_name, safe_component(config.missing)))


# -- masters -----------------------------------------------------------------------------------


def masters_for(session: Session, light_ids: Sequence[int], kinds: Sequence[str],
                rules: RuleBook | None = None) -> dict[tuple[int, str], list[int]]:
    """(light id, kind) -> the master frame ids that calibrate it (several for an interpolated
    dark; the bad-pixel mask for kind ``badpix``); pairs without a valid master are absent.

    The master library's selection (:func:`archive.calib.select_sql.select_masters` under
    ``rules``, resolved by the caller; default the configured ``configs/matching``): masters
    flagged bad or outside their validity are never chosen.
    """
    if not light_ids or not kinds:
        return {}
    calibration = [k for k in kinds if k != BADPIX]
    chosen = select_masters(session, list(light_ids), tuple(calibration), rules=rules) if calibration else {}
    out = {key: [mid for mid, _ in sel.weights] for key, sel in chosen.items() if sel.found}
    if BADPIX in kinds:  # the bad-pixel mask, judged light by light as calibration does
        library = masters_of(session, BADPIX)
        for light in frames_by_id(session, light_ids).values():
            mask = explain_selection(session, light, BADPIX, rules=rules, library=library)
            if mask.found:
                out[(light.id, BADPIX)] = [mask.master_id]
    return out


# -- collect -----------------------------------------------------------------------------------


@dataclass
class CollectSummary:
    """What ``archive project collect`` did, per filter.

    Attributes
    ----------
    lights, masters : dict of str to CopybackSummary
        Per filter: the lights and the masters copied (or planned).
    missing_masters : dict of str to Counter
        Per filter: calibration kind -> lights without a valid master of that kind.
    super_luminance : Path, optional
        The super-luminance list written, and ``super_luminance_count`` lights in it.
    """

    lights: dict[str, CopybackSummary] = field(default_factory=dict)
    masters: dict[str, CopybackSummary] = field(default_factory=dict)
    missing_masters: dict[str, Counter] = field(default_factory=dict)
    super_luminance: Path | None = None
    super_luminance_count: int = 0
    recorded_found: int = 0
    temp_removed: int = 0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Nothing failed."""
        return all(s.ok for s in (*self.lights.values(), *self.masters.values()))

    def lines(self) -> list[str]:
        """A human summary: one line per filter, then the failures."""
        verb = "would copy" if self.dry_run else "copied"
        out = []
        for name, lights in self.lights.items():
            masters = self.masters.get(name, CopybackSummary())
            dup = sum(lights.duplicates.values())
            line = (f"{name}: {lights.exposures} exposure(s); {verb} {lights.copied} light(s), "
                    f"{lights.present} already there" + (f", {dup} duplicate(s) skipped" if dup else "")
                    + f"; masters: {verb} {masters.copied}, {masters.present} already there")
            missing = self.missing_masters.get(name)
            if missing:
                line += "; no valid master for " + ", ".join(f"{n} light(s) ({k})" for k, n in sorted(missing.items()))
            out.append(line)
        if self.super_luminance:
            out.append(f"super-luminance: {self.super_luminance_count} light(s) listed in {self.super_luminance}")
        if self.recorded_found:
            out.append(f"recorded {self.recorded_found} file(s) found in the project folder (an interrupted run)")
        for summary in (*self.lights.values(), *self.masters.values()):
            out.extend(f"FAILED {path}: {reason}" for path, reason in summary.failures)
        return out


def collect_project(
    engine: Engine,
    name: str,
    *,
    mode: str = "copy",
    dry_run: bool = False,
    super_luminance: bool = False,
    settings: Settings | None = None,
    config: GatherConfig | None = None,
    progress: Progress | None = None,
    lock_timeout_s: float | None = None,
) -> CollectSummary:
    """Collect a project's lights and their masters into its folder, per filter.

    Lights are gathered like :func:`archive.gather.copyback.copyback` (one file per exposure,
    verified, recorded as copies; an exposure already in the filter's folder is skipped, so a
    second collect after a new night adds only the new frames). For each filter, the masters
    chosen for its lights (:func:`masters_for`), the masters below them and the lights' bad-pixel
    masks are copied to the filter's masters folder (never moved, even with ``mode='move'``).

    Parameters
    ----------
    engine : Engine
    name : str
        The project.
    mode : {'copy', 'link', 'move'}
        For the lights; masters are copied (or linked with 'link').
    dry_run : bool
        Plan only: nothing is written to disk or to the catalogue.
    super_luminance : bool
        Also write the list of every collected light of ``super_luminance_filters`` (by
        default L, R, G and B; ``superlum.txt``), among the filters collected.
    lock_timeout_s : float, optional
        Seconds to wait while another run holds the project folder's lock: None (default)
        waits as long as it takes, 0 not at all.

    Raises
    ------
    ValueError
        Unknown ``mode``.
    ProjectError
        No such project.
    DestinationBusyError
        Another run held the project folder's lock for longer than ``lock_timeout_s``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    settings = settings or load_settings()
    config = config or load_gather_config(settings)
    rules = default_rulebook(settings)
    summary = CollectSummary(dry_run=dry_run)
    with session_scope(engine) as session:
        project = get_project(session, name)
    root = Path(project.folder)
    if dry_run:
        for plan, _, _ in _plan_collect(engine, project, root, mode, config, summary, rules):
            plan.dry_run = True
        return summary
    with hold_destination(root, timeout_s=lock_timeout_s):
        summary.temp_removed, summary.recorded_found = recover_destination(engine, root, settings=settings)
        for plan, plan_root, plan_mode in _plan_collect(engine, project, root, mode, config, summary, rules):
            if plan.plan:
                plan_root.mkdir(parents=True, exist_ok=True)
                execute_plan(engine, plan, plan_root, mode=plan_mode, config=config, settings=settings,
                             progress=progress)
        if super_luminance:
            summary.super_luminance, summary.super_luminance_count = _write_super_luminance(
                engine, root, list(summary.lights), config)
        with session_scope(engine, write=True) as session:
            session.get(Project, project.id).collected_at = utcnow()
    return summary


def _plan_collect(
    engine: Engine, project: Project, root: Path, mode: str, config: GatherConfig, summary: CollectSummary,
    rules: RuleBook,
) -> list[tuple[CopybackSummary, Path, str]]:
    """Plan a collect: per filter, the lights and their masters (filling ``summary``); returns
    (plan, folder, mode) for each."""
    selection = project_selection(project)
    plans: list[tuple[CopybackSummary, Path, str]] = []
    with session_scope(engine) as session:
        per_filter = _by_filter(project, select_exposures(session, selection, config=config))
        for filter_name, groups in per_filter.items():
            lights_root = _folder(root, config.lights_folder, filter_name, config)
            lights = plan_copyback(session, selection, lights_root, mode=mode, config=config,
                                   template=config.project_lights, groups=groups)
            summary.lights[filter_name] = lights
            plans.append((lights, lights_root, mode))
            light_ids = [g[0].id for g in groups.groups]
            needs = required_for_lights(session, [(g[0].id, g[0].instrument_id) for g in groups.groups], rules)
            chosen = masters_for(session, light_ids, LIBRARY_KINDS, rules)
            missing = Counter(k for i in light_ids for k in needs[i] if (i, k) not in chosen)
            if missing:
                summary.missing_masters[filter_name] = missing
            picked = {m for (_, kind), ids in chosen.items() if kind != BADPIX for m in ids}
            masks = {m for (_, kind), ids in chosen.items() if kind == BADPIX for m in ids}  # used as they are
            rows = frame_rows(session, picked | masters_below(session, picked) | masks)
            masters_root = _folder(root, config.masters_folder, filter_name, config)
            master_mode = "link" if mode == "link" else "copy"
            masters = plan_copyback(session, selection, masters_root, mode=master_mode, config=config,
                                    template=config.project_masters, groups=ExposureSelection(groups=[[r] for r in rows]))
            summary.masters[filter_name] = masters
            plans.append((masters, masters_root, master_mode))
    return plans


def _write_super_luminance(engine: Engine, root: Path, filters: Sequence[str], config: GatherConfig) -> tuple[Path, int]:
    """Write the list of the collected lights of ``filters`` that are super-luminance filters
    (``config.super_luminance_filters``, case-insensitive): absolute paths, one a line, sorted.

    ``filters`` are the filters the collect found (the project's, or every one found when it
    names none). The list goes to a temporary name, is synced, then renamed over the old one.
    """
    wanted = {f.lower() for f in config.super_luminance_filters}
    folders = [_folder(root, config.lights_folder, f, config) for f in filters if f.lower() in wanted]
    paths: list[str] = []
    with session_scope(engine) as session:
        for folder in folders:
            paths += [p for p in session.scalars(select(Copy.path).where(
                Copy.is_current, Copy.path.startswith(folder_prefix(folder), autoescape=True))) if os.path.exists(p)]
    target = root / safe_component(config.super_luminance, "superlum.txt")
    root.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            out.write("".join(f"{p}\n" for p in sorted(paths)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)  # the list is ours to replace (it is not a frame)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(root)
    return target, len(paths)


# -- status ------------------------------------------------------------------------------------


def project_status(engine: Engine, name: str, *, config: GatherConfig | None = None,
                   rules: RuleBook | None = None) -> pd.DataFrame:
    """Integration per filter: what the catalogue holds for the project, what is usable, the gap.

    Returns
    -------
    DataFrame
        One row per filter (the project's, in order; else every filter found): ``frames``
        (exposures, duplicates counted once), ``nights``, ``total_h`` (their exposure, hours),
        ``usable_h`` (of lights with a valid master of every required kind and not rejected
        by their quality verdict, :func:`archive.reduce.quality.verdicts`), ``goal_h`` and
        ``gap_h`` (goal minus usable, at least 0; empty without a goal), ``collected``
        (exposures with a file in the project's lights folder), ``duplicates`` (frames skipped
        as duplicate exposures), ``missing`` (lights without a valid master, per kind) and
        ``rejected`` (lights with their masters but rejected, left out of ``usable_h``).

    Raises
    ------
    ProjectError
        No such project.
    """
    config = config or load_gather_config()
    rules = rules if rules is not None else default_rulebook()
    rows = []
    with session_scope(engine) as session:
        project = get_project(session, name)
        goals = {g.filter_name.lower(): g.goal_s for g in project.goals}
        per_filter = _by_filter(project, select_exposures(session, project_selection(project), config=config))
        for filter_name, groups in per_filter.items():
            kept = [g[0] for g in groups.groups]
            needs = required_for_lights(session, [(r.id, r.instrument_id) for r in kept], rules)
            chosen = masters_for(session, [r.id for r in kept], sorted({k for ks in needs.values() for k in ks}), rules)
            missing = Counter(k for r in kept for k in needs[r.id] if (r.id, k) not in chosen)
            calibrated = [r for r in kept if all((r.id, k) in chosen for k in needs[r.id])]
            judged = verdicts(session, [r.id for r in calibrated])  # rejected frames are not usable
            usable = integrate(calibrated, rejected_ids(judged)).get((), {"accepted_s": 0.0, "rejected": 0})
            total = integrate(kept, ()).get((), {"frames": 0, "exposure_s": 0.0})
            under = FrameFilter(folder=_folder(Path(project.folder), config.lights_folder, filter_name, config))
            ids = [r.id for g in groups.groups for r in g]
            inside = {frame_id for chunk in chunked(ids) for frame_id in session.scalars(
                frame_query(under, Frame.id).where(Frame.id.in_(chunk)))}
            collected = sum(1 for g in groups.groups if any(r.id in inside for r in g))
            total_s, usable_s = total["exposure_s"], usable["accepted_s"]
            goal_s = goals.get(filter_name.lower())
            rows.append({
                "filter": filter_name, "frames": len(kept), "nights": len({r.night for r in kept if r.night}),
                "total_h": round(total_s / 3600.0, 3), "usable_h": round(usable_s / 3600.0, 3),
                "goal_h": round(goal_s / 3600.0, 3) if goal_s is not None else None,
                "gap_h": round(max(goal_s - usable_s, 0.0) / 3600.0, 3) if goal_s is not None else None,
                "collected": collected, "duplicates": sum(len(g) - 1 for g in groups.groups),
                "missing": ", ".join(f"{k}: {n}" for k, n in sorted(missing.items())),
                "rejected": usable["rejected"],
            })
    columns = ["filter", "frames", "nights", "total_h", "usable_h", "goal_h", "gap_h", "collected", "duplicates", "missing",
               "rejected"]
    return pd.DataFrame(rows, columns=columns)


def list_projects(session: Session) -> pd.DataFrame:
    """Every project: name, target, place on the sky (``cone RA DEC RADIUS``, ``covers RA DEC``;
    deg), filters, folder, goals (h), created and last collected."""
    rows = []
    for p in session.scalars(select(Project).order_by(Project.name)):
        rows.append({
            "name": p.name, "target": p.target, "sky": sky_text(p), "filters": ",".join(p.filters),
            "folder": p.folder, "goals": ", ".join(f"{g.filter_name}={g.goal_s / 3600:g}h" for g in p.goals),
            "created_at": p.created_at, "collected_at": p.collected_at,
        })
    return pd.DataFrame(rows, columns=["name", "target", "sky", "filters", "folder", "goals", "created_at",
                                       "collected_at"])
