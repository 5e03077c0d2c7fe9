"""Copyback: gather a target's frames from every night into one folder, once per exposure.

The rules (issue 5, ``shared/DESIGN.md`` "Identity" and "Safety"):

* **Selection** is a catalogue query (:func:`archive.reports.catalog.frame_query`): lights
  (``kind='raw'``) or calibrated lights (``kind='calibrated'``) of a target, optionally one
  filter and a DATE-OBS range, across every night. The target matches loosely by name
  (:func:`archive.ingest.dialects.target_key`: "M 31" = "M31" = "m31") and, for frames that
  carry RA/Dec, by position: a frame lies within ``position_radius_arcmin`` of a *reference
  position*, which is ``--ra/--dec`` when given, else the position of any frame whose name
  matched. Name resolution (Sesame, SIMBAD) needs the network and is not used.
* **One copy per exposure.** Frames of one instrument with the same DATE-OBS are one exposure
  whatever their bytes (a compressed copy, an edited header): the kept frame is the one the
  catalogue holds as the original (``duplicate_of_id`` NULL), read from its canonical copy;
  the others are skipped, with the reason. Frames without an instrument or DATE-OBS cannot be
  de-duplicated and count as their own exposure.
* **Never overwrite, never twice.** An exposure of which any frame already has a copy under the
  destination (known from the catalogue's copies, the file present) is not copied again, so a
  re-run is a no-op. A name that exists gets the next ``{seq}`` number.
* **Verified, then recorded.** Each file is written to a hidden temporary name beside its
  destination while the source is hashed, re-read and checked against the frame's SHA-256,
  then linked to its final name (which fails rather than overwrite) and recorded by
  :func:`archive.ingest.ingest_paths` as a new copy of the frame. With ``mode='move'`` the
  source is deleted only after the verified copy is recorded; the catalogue's row of the
  source copy then stops being current and the new copy becomes canonical.
* **Interrupted runs are finished, not repeated.** A run starts (:func:`recover_destination`)
  by deleting the temporary files of interrupted writers under the destination
  (:func:`archive.files.remove_partials`: only those whose process is gone) and recording the
  destination's files the catalogue does not know yet (a run killed between rename and
  record), so no exposure is copied twice.
* **One run per destination at a time.** A real run holds an exclusive lock on
  ``<dest>/.archive-lock`` (:func:`hold_destination`) from that recovery to its last record, so
  two runs into one folder never plan the same exposures; the second waits for the first (or,
  with a timeout, stops with :class:`DestinationBusyError`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import math
import os
import re
import string
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.coordinates import angular_separation
from sqlalchemy import Engine, Row, select, update
from sqlalchemy.orm import Session

from archive.config import Settings, load_settings, merge, read_toml
from archive.db.bulk import chunked
from archive.db.models import DERIVED_TYPES, Copy, Frame, Instrument
from archive.db.session import session_scope
from archive.errors import ConfigError, DestinationBusyError
from archive.files import (
    fits_ending, fsync_dir, remove_partials, render_path, safe_component, sha256_file, temporary_path,
)
from archive.ingest.ingest import ingest_paths
from archive.progress import NoProgress, Progress
from archive.db.frames import FrameFilter, frame_query
from archive.resources import resource_dir

log = logging.getLogger(__name__)

MODES = ("copy", "link", "move")
KINDS = {"raw": "light", "calibrated": "calibrated"}
#: The lock file a real run holds in its destination (hidden: ingest skips it).
LOCK_NAME = ".archive-lock"

_CHUNK = 1 << 20


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatherConfig:
    """Copyback and project settings, made by :func:`load_gather_config`.

    ``configs/copyback.toml`` is the one source of the defaults (overridable in the user
    file); this class has none of its own.

    Attributes
    ----------
    template : str
        Destination name below the copyback folder; fields are listed in ``copyback.toml``.
    date_format : str
        ``strftime`` format of ``{date_obs}`` (UTC).
    missing : str
        Field value when the frame has none.
    position_radius_arcmin : float
        Position-match radius, arcmin.
    batch_files : int
        Files copied per catalogue transaction.
    lights_folder, masters_folder : str
        A project's folders of lights and of masters, below its folder (``{filter}`` allowed).
    project_lights, project_masters : str
        Name templates of a project's lights and masters in those folders.
    required_masters : tuple of str
        Calibration kinds (bias, dark, flat) a light needs to count as usable.
    super_luminance : str
        File name of a project's super-luminance list.
    super_luminance_filters : tuple of str
        Filters whose lights make the super-luminance (compared case-insensitively).
    """

    template: str
    date_format: str
    missing: str
    position_radius_arcmin: float
    batch_files: int
    lights_folder: str
    project_lights: str
    masters_folder: str
    project_masters: str
    required_masters: tuple[str, ...]
    super_luminance: str
    super_luminance_filters: tuple[str, ...]


def load_gather_config(settings: Settings | None = None) -> GatherConfig:
    """Read ``configs/copyback.toml`` merged with the user file's ``[copyback]``/``[project]``.

    The package file holds every key (it is the only place defaults are written); the user
    file may override any of them. ``load_gather_config(Settings())`` gives the package
    defaults alone.

    Raises
    ------
    ConfigError
        The file is unreadable, a key is missing, a value has the wrong type, or a template
        lacks ``{seq}``.
    """
    settings = settings or load_settings()
    data = read_toml(resource_dir("configs") / "copyback.toml")
    data = merge(data, {k: settings.raw[k] for k in ("copyback", "project") if isinstance(settings.raw.get(k), dict)})
    cb, pr = data.get("copyback", {}), data.get("project", {})
    try:
        config = GatherConfig(
            template=str(cb["template"]),
            date_format=str(cb["date_format"]),
            missing=str(cb["missing"]),
            position_radius_arcmin=float(cb["position_radius_arcmin"]),
            batch_files=max(1, int(cb["batch_files"])),
            lights_folder=str(pr["lights_folder"]),
            project_lights=str(pr["lights"]),
            masters_folder=str(pr["masters_folder"]),
            project_masters=str(pr["masters"]),
            required_masters=tuple(str(k) for k in pr["required_masters"]),
            super_luminance=str(pr["super_luminance"]),
            super_luminance_filters=tuple(str(f) for f in pr["super_luminance_filters"]),
        )
    except KeyError as exc:
        raise ConfigError(f"configs/copyback.toml: missing key {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configs/copyback.toml: invalid value: {exc}") from exc
    for template in (config.template, config.project_lights, config.project_masters):
        check_template(template)
    return config


def check_template(template: str) -> None:
    """Check a destination template: known fields only, ``{seq}`` present, a relative path.

    Raises
    ------
    ConfigError
        Unknown field, no ``{seq}``, or an absolute template.
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"destination template {template!r}: {exc}") from exc
    unknown = fields - set(FIELDS)
    if unknown:
        raise ConfigError(f"destination template {template!r}: unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
    if "seq" not in fields:
        raise ConfigError(f"destination template {template!r} needs a {{seq}} field (names are never overwritten)")
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ConfigError(f"destination template {template!r} must be a relative path")


# -- selection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which frames to gather.

    Attributes
    ----------
    target : str, optional
        Target name, matched loosely; also the ``{target}`` of destination names.
    filter_name : str, optional
        Filter, case-insensitive.
    night : date, optional
        Local observing night.
    since, until : datetime, optional
        ``since <= DATE-OBS < until`` (UTC).
    min_exposure_s, max_exposure_s : float, optional
        Exposure time range in s, inclusive.
    kind : {'raw', 'calibrated'}
        Raw lights, or the calibrated lights made by reduction.
    image_type : str, optional
        Any normalized image type instead of ``kind`` (e.g. 'flat').
    instrument : str, optional
        Instrument name, exact.
    ra_deg, dec_deg : float, optional
        A reference position (deg, ICRS): frames within the radius are selected too.
    radius_arcmin : float, optional
        Position-match radius (default the configured one); 0 turns position matching off.
    """

    target: str | None = None
    filter_name: str | None = None
    night: dt.date | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_exposure_s: float | None = None
    max_exposure_s: float | None = None
    kind: str = "raw"
    image_type: str | None = None
    instrument: str | None = None
    ra_deg: float | None = None
    dec_deg: float | None = None
    radius_arcmin: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {self.kind!r}")
        if (self.ra_deg is None) != (self.dec_deg is None):
            raise ValueError("give both ra_deg and dec_deg, or neither")

    def frame_filter(self, *, with_target: bool = True) -> FrameFilter:
        """The :class:`FrameFilter` of everything but the position match."""
        return FrameFilter(
            image_type=self.image_type or KINDS[self.kind], filter_name=self.filter_name, night=self.night,
            target=self.target if with_target else None, instrument=self.instrument,
            since=self.since, until=self.until, min_exposure_s=self.min_exposure_s, max_exposure_s=self.max_exposure_s,
        )


_COLUMNS = (
    Frame.id, Frame.sha256, Frame.instrument_id, Instrument.name.label("instrument"), Frame.date_obs,
    Frame.date_obs_s, Frame.night, Frame.image_type, Frame.target, Frame.filter_name, Frame.exposure_time_s,
    Frame.binning_x, Frame.binning_y, Frame.ra_deg, Frame.dec_deg, Frame.duplicate_of_id,
)


@dataclass
class ExposureSelection:
    """The frames a :class:`Selection` matched, grouped into exposures.

    Attributes
    ----------
    groups : list of list of Row
        One list per exposure, the frame to keep first (the original before its duplicates,
        then by id); rows carry the columns of ``_COLUMNS``.
    by_position : list of Row
        Frames selected by position whose name did not match.
    """

    groups: list[list[Row]] = field(default_factory=list)
    by_position: list[Row] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """Frames matched."""
        return sum(len(g) for g in self.groups)


def _separation_arcmin(ra: np.ndarray, dec: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Smallest separation (arcmin) of each (ra, dec) from the reference positions (deg)."""
    if len(refs) == 0 or len(ra) == 0:
        return np.full(len(ra), np.inf)
    sep = angular_separation(
        np.radians(ra)[:, None], np.radians(dec)[:, None], np.radians(refs[:, 0])[None, :], np.radians(refs[:, 1])[None, :]
    )
    return np.degrees(np.min(sep, axis=1)) * 60.0


def select_exposures(session: Session, selection: Selection, *, config: GatherConfig | None = None) -> ExposureSelection:
    """Select frames by name and position, and group them into exposures.

    Parameters
    ----------
    session : Session
    selection : Selection
    config : GatherConfig, optional
        Gives the default position radius (arcmin).

    Returns
    -------
    ExposureSelection
        Exposures ordered by DATE-OBS; within each, the frame to keep first.

    Notes
    -----
    Position matching: the reference positions are ``selection.ra_deg/dec_deg`` if given, else
    the RA/Dec of every frame (of the selected kind) whose name matched. A frame of another
    name whose RA/Dec lies within the radius of a reference (great-circle distance) is
    selected too. The declination band is cut in SQL; the distance is computed in Python, so
    both backends give the same answer.
    """
    config = config or load_gather_config()
    radius = config.position_radius_arcmin if selection.radius_arcmin is None else selection.radius_arcmin
    rows: dict[int, Row] = {}
    if selection.target:
        for row in session.execute(frame_query(selection.frame_filter(), *_COLUMNS)):
            rows[row.id] = row
    elif selection.ra_deg is None:
        for row in session.execute(frame_query(selection.frame_filter(with_target=False), *_COLUMNS)):
            rows[row.id] = row
    by_position: list[Row] = []
    if radius > 0:
        if selection.ra_deg is not None:
            refs = np.array([[selection.ra_deg, selection.dec_deg]])
        else:
            refs = np.array(sorted({(round(r.ra_deg, 3), round(r.dec_deg, 3)) for r in rows.values()
                                    if r.ra_deg is not None and r.dec_deg is not None}))
        if len(refs):
            band = radius / 60.0
            query = frame_query(selection.frame_filter(with_target=False), *_COLUMNS).where(
                Frame.ra_deg.is_not(None), Frame.dec_deg.is_not(None),
                Frame.dec_deg >= float(refs[:, 1].min()) - band, Frame.dec_deg <= float(refs[:, 1].max()) + band,
            )
            candidates = [r for r in session.execute(query) if r.id not in rows]
            if candidates:
                sep = _separation_arcmin(
                    np.array([r.ra_deg for r in candidates], float), np.array([r.dec_deg for r in candidates], float), refs
                )
                for row, distance in zip(candidates, sep):
                    if distance <= radius:
                        rows[row.id] = row
                        by_position.append(row)
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows.values():
        key = (row.instrument_id, row.date_obs) if row.instrument_id is not None and row.date_obs is not None else ("frame", row.id)
        groups[key].append(row)
    ordered = []
    for members in groups.values():
        # raw: the original exposure first; derived (re-reduced after a better master): the newest
        members.sort(key=lambda r: (r.duplicate_of_id is not None, -r.id if r.image_type in DERIVED_TYPES else r.id))
        ordered.append(members)
    ordered.sort(key=lambda g: (g[0].date_obs is None, g[0].date_obs or dt.datetime.min, g[0].id))
    return ExposureSelection(groups=ordered, by_position=by_position)


# -- names -----------------------------------------------------------------------------------

FIELDS = ("target", "object", "filter", "instrument", "image_type", "night", "binning", "date_obs", "exposure", "seq", "ext")


def _exposure_text(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return f"{seconds:g}"


def name_fields(row: Row, source_path: str, *, target: str | None, config: GatherConfig) -> dict[str, str]:
    """The sanitized template fields (all but ``seq``) of one frame."""
    missing = safe_component(config.missing, "unknown")
    binning = f"{row.binning_x}x{row.binning_y}" if row.binning_x and row.binning_y else None
    values = {
        "target": target or row.target,
        "object": row.target,
        "filter": row.filter_name,
        "instrument": row.instrument,
        "image_type": row.image_type,
        "night": row.night.isoformat() if row.night else None,
        "binning": binning,
        "date_obs": row.date_obs.strftime(config.date_format) if row.date_obs else None,
        "exposure": _exposure_text(row.exposure_time_s),
    }
    fields = {key: safe_component(value, missing) for key, value in values.items()}
    fields["ext"] = fits_ending(source_path)
    return fields


def destination(root: Path, template: str, fields: dict[str, str], seq: int) -> Path:
    """``root / template`` filled with ``fields`` and ``seq`` (:func:`archive.files.render_path`).

    Raises
    ------
    UnsafePathError
        The path would leave ``root`` (an absolute template, ``..`` in the template).
    """
    return render_path(root, template, seq=seq, **fields)


# -- the plan --------------------------------------------------------------------------------


@dataclass
class Planned:
    """One file to write (or, when finishing a move, one source to delete)."""

    frame_id: int
    sha256: str
    source: str
    source_copy_id: int
    source_canonical: bool
    dest: Path
    fields: dict[str, str]
    template: str
    action: str = "copy"  # copy | finish-move
    label: str = ""


@dataclass
class CopybackSummary:
    """What a copyback did (or, with ``dry_run``, would do).

    Attributes
    ----------
    frames : int
        Frames the selection matched.
    exposures : int
        Distinct exposures among them.
    by_position : int
        Frames matched by position under another name.
    duplicates : Counter
        Frames skipped as duplicates, by reason.
    present : int
        Exposures already under the destination (not copied again).
    copied : int
        Files written, verified and recorded (planned, in a dry run).
    moved : int
        Sources deleted after their copy was recorded (``mode='move'``).
    recorded_found : int
        Files found under the destination that the catalogue did not know (an interrupted
        run's), recorded before copying.
    temp_removed : int
        Temporary files of an interrupted run deleted.
    same_bytes : int
        Other files holding the same bytes as a copied frame (other copies), not copied.
    failures : list of (path, reason)
        Exposures not copied: no readable source, a source that changed since it was
        catalogued, a verification or recording failure.
    plan : list of Planned
        Every file written (or to be written).
    """

    frames: int = 0
    exposures: int = 0
    by_position: int = 0
    duplicates: Counter = field(default_factory=Counter)
    present: int = 0
    copied: int = 0
    moved: int = 0
    recorded_found: int = 0
    temp_removed: int = 0
    same_bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    plan: list[Planned] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def lines(self) -> list[str]:
        """A human summary, one fact a line."""
        verb = "would copy" if self.dry_run else "copied"
        out = [
            f"selected {self.frames} frame(s) = {self.exposures} exposure(s)"
            + (f", {self.by_position} matched by position under another name" if self.by_position else ""),
            f"{verb} {self.copied} file(s); {self.present} exposure(s) already in the destination",
        ]
        if self.same_bytes:
            out.append(f"skipped {self.same_bytes} other file(s) holding the same bytes as a copied frame")
        for reason, count in sorted(self.duplicates.items()):
            out.append(f"skipped {count} duplicate(s): {reason}")
        if self.moved:
            out.append(f"deleted {self.moved} source file(s) after their copy was recorded (--move)")
        if self.recorded_found:
            out.append(f"recorded {self.recorded_found} file(s) found in the destination (an interrupted run)")
        if self.temp_removed:
            out.append(f"removed {self.temp_removed} temporary file(s) of an interrupted run")
        for path, reason in self.failures:
            out.append(f"FAILED {path}: {reason}")
        return out


def _under(root: Path) -> str:
    return str(root).rstrip(os.sep) + os.sep


def _sources(session: Session, frame_ids: Iterable[int]) -> dict[int, list[Row]]:
    """frame id -> its current copies, canonical first."""
    out: dict[int, list[Row]] = defaultdict(list)
    for ids in chunked(frame_ids):
        query = (
            select(Copy.id, Copy.frame_id, Copy.path, Copy.is_canonical, Copy.sha256)
            .where(Copy.is_current, Copy.frame_id.in_(ids))
            .order_by(Copy.is_canonical.desc(), Copy.id)
        )
        for row in session.execute(query):
            out[row.frame_id].append(row)
    return out


def _duplicate_reason(kept: Row, other: Row) -> str:
    """Why ``other``, a frame of the same exposure (instrument and DATE-OBS) as ``kept``, is skipped.

    Frames of one exposure differ in bytes (the same bytes are one frame), so the reason says
    which of them was kept and why.
    """
    if other.image_type in DERIVED_TYPES:  # re-reductions of one exposure: the newest readable is kept
        if other.id < kept.id:
            return f"same exposure: an older {other.image_type} product (the newest readable one is kept)"
        return f"same exposure: a newer {other.image_type} product without a readable file (an older one is kept)"
    if other.duplicate_of_id is not None:
        return "same exposure (instrument and DATE-OBS) as a kept frame, other bytes (a compressed, edited or re-written copy)"
    if kept.duplicate_of_id is not None:
        return "same exposure: the original has no readable file, a copy with other bytes was kept instead"
    return "same exposure (instrument and DATE-OBS) as a kept frame, other bytes"


def plan_copyback(
    session: Session,
    selection: Selection,
    dest: str | Path,
    *,
    mode: str = "copy",
    config: GatherConfig | None = None,
    template: str | None = None,
    groups: ExposureSelection | None = None,
    reserved: set[Path] | None = None,
) -> CopybackSummary:
    """Decide what a copyback would write, without writing anything.

    Parameters
    ----------
    session : Session
    selection : Selection
    dest : str or Path
        The destination folder (need not exist).
    mode : {'copy', 'link', 'move'}
    config : GatherConfig, optional
    template : str, optional
        Name template (default ``config.template``).
    groups : ExposureSelection, optional
        Exposures already selected (default :func:`select_exposures` of ``selection``).
    reserved : set of Path, optional
        Names already taken by another plan of the same run (updated).

    Returns
    -------
    CopybackSummary
        With ``plan`` filled and nothing copied.

    Raises
    ------
    ValueError
        Unknown mode.
    UnsafePathError
        The template leads outside ``dest``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    config = config or load_gather_config()
    template = template or config.template
    check_template(template)
    root = Path(dest).expanduser().absolute()
    groups = groups if groups is not None else select_exposures(session, selection, config=config)
    reserved = reserved if reserved is not None else set()
    summary = CopybackSummary(frames=groups.frames, exposures=len(groups.groups), by_position=len(groups.by_position))
    all_ids = [r.id for g in groups.groups for r in g]
    copies = _sources(session, all_ids)
    for group in groups.groups:
        inside = [c for r in group for c in copies.get(r.id, []) if c.path.startswith(_under(root)) and os.path.lexists(c.path)]
        outside = {r.id: [c for c in copies.get(r.id, []) if not c.path.startswith(_under(root))] for r in group}
        kept = None
        if inside:
            summary.present += 1
            kept = next(r for r in group if any(c.frame_id == r.id for c in inside))
            if mode == "move":
                done = {c.frame_id for c in inside}
                for c in outside.get(kept.id, []):
                    if c.is_canonical and kept.id in done:
                        summary.plan.append(Planned(
                            kept.id, kept.sha256, c.path, c.id, True,
                            Path(next(i.path for i in inside if i.frame_id == kept.id)), {}, template, "finish-move",
                        ))
        else:
            for row in group:
                readable = [c for c in outside[row.id] if os.path.isfile(c.path)]
                if readable:
                    kept, source = row, readable[0]
                    break
            if kept is None:
                paths = [c.path for r in group for c in outside[r.id]]
                summary.failures.append((paths[0] if paths else f"frame {group[0].id}",
                                         "no readable file of this exposure (moved or deleted since it was catalogued?)"))
                continue
            fields = name_fields(kept, source.path, target=selection.target, config=config)
            seq = 1
            while True:
                path = destination(root, template, fields, seq)
                if path not in reserved and not os.path.lexists(path):
                    break
                seq += 1
            reserved.add(path)
            label = f"{kept.instrument or '?'} {kept.date_obs.isoformat() if kept.date_obs else '?'}"
            summary.plan.append(Planned(kept.id, kept.sha256, source.path, source.id, source.is_canonical,
                                        path, fields, template, "copy", label))
            summary.same_bytes += len(outside[kept.id]) - 1
        for row in group:
            if row is not kept:
                summary.duplicates[_duplicate_reason(kept, row)] += 1
    summary.copied = sum(1 for p in summary.plan if p.action == "copy")
    return summary


# -- doing it --------------------------------------------------------------------------------


class _VerifyError(Exception):
    pass


def _write_verified(item: Planned, root: Path, mode: str) -> Path:
    """Write ``item.source`` to ``item.dest`` (next free seq if taken), verified; return the path."""
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        while True:
            try:
                os.symlink(os.path.abspath(item.source), item.dest)
                break
            except FileExistsError:
                item.dest = _next_free(item, root)
        if sha256_file(item.dest) != item.sha256:
            os.unlink(item.dest)
            raise _VerifyError("the linked file's SHA-256 differs from the catalogue's (changed since it was catalogued?)")
        return item.dest
    tmp = temporary_path(item.dest)
    digest = hashlib.sha256()
    try:
        with open(item.source, "rb") as src, open(tmp, "xb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != item.sha256:
            raise _VerifyError("the source's SHA-256 differs from the catalogue's (changed since it was catalogued?)")
        if sha256_file(tmp) != item.sha256:
            raise _VerifyError("the written copy's SHA-256 differs from the source's")
        stat = os.stat(item.source)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        while True:
            try:
                os.link(tmp, item.dest)  # fails instead of overwriting
                break
            except FileExistsError:
                item.dest = _next_free(item, root)
            except OSError:  # no hard links on this file system: check, then rename
                if os.path.lexists(item.dest):
                    item.dest = _next_free(item, root)
                    continue
                os.rename(tmp, item.dest)
                break
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(item.dest.parent)
    return item.dest


def _next_free(item: Planned, root: Path) -> Path:
    seq = 1
    while os.path.lexists(path := destination(root, item.template, item.fields, seq)):
        seq += 1
    return path


def recover_destination(engine: Engine, root: Path, *, settings: Settings | None = None) -> tuple[int, int]:
    """Finish what an interrupted run left in ``root`` before planning a new one.

    Deletes the temporary files of writers that are gone (:func:`archive.files.remove_partials`;
    a running writer's file is left alone), then records the files under ``root`` that the
    catalogue does not know yet (a run killed between rename and record) with
    :func:`archive.ingest.ingest_paths`, so that the plan sees them as present. Call it while
    holding :func:`hold_destination`.

    Returns
    -------
    (int, int)
        Temporary files removed; files recorded (new frames, new copies, changed copies).
    """
    if not root.is_dir():
        return 0, 0
    removed = remove_partials(root)
    found = ingest_paths(engine, [root], settings=settings)
    return removed, found.new + found.new_copies + found.changed


def _lock_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def hold_destination(root: Path, *, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of the folder ``root`` (created when needed) while the block runs.

    The lock is an ``fcntl.flock`` on ``root/.archive-lock``, which is kept (deleting a lock
    file races with its next user) and holds the holder's process id. The kernel releases it
    when the holder exits, even when killed. Another holder makes this wait: as long as it
    takes when ``timeout_s`` is None, else at most ``timeout_s`` seconds (0: not at all).

    Raises
    ------
    DestinationBusyError
        The lock was not free within ``timeout_s``.
    """
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            busy = f"another copyback or project collect ({holder}) is writing into {root} (it holds {lock})"
            if timeout_s is not None and timeout_s <= 0:
                raise DestinationBusyError(f"{busy}; try again when it has finished") from None
            log.warning("%s; waiting for it to finish", busy)
            if timeout_s is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout_s
                while True:
                    time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise DestinationBusyError(f"{busy}; waited {timeout_s:g} s") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock


def _retire_source(session: Session, item: Planned) -> None:
    """The moved source's copy row stops being current; the destination copy becomes canonical."""
    session.execute(update(Copy).where(Copy.id == item.source_copy_id).values(is_current=False, is_canonical=False))
    if item.source_canonical:
        session.execute(
            update(Copy).where(Copy.is_current, Copy.path == str(item.dest), Copy.frame_id == item.frame_id)
            .values(is_canonical=True)
        )


def _recorded(session: Session, items: Sequence[Planned]) -> set[str]:
    expected = {str(i.dest): i.sha256 for i in items}
    recorded: set[str] = set()
    for paths in chunked(expected):
        rows = session.execute(select(Copy.path, Copy.sha256).where(Copy.is_current, Copy.path.in_(paths)))
        recorded.update(p for p, sha in rows if expected.get(p) == sha)
    return recorded


def execute_plan(
    engine: Engine,
    summary: CopybackSummary,
    root: Path,
    *,
    mode: str,
    config: GatherConfig,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> CopybackSummary:
    """Write, verify, record (and for ``move`` delete the sources of) ``summary.plan``.

    Files are handled in batches of ``config.batch_files``: each batch is written and verified,
    then recorded in one call of :func:`archive.ingest.ingest_paths`, then (``move``) its sources
    are deleted and their copy rows retired. A failed file is reported in ``summary.failures``
    and its source is left alone.
    """
    progress = progress or NoProgress()
    progress.start(len(summary.plan), "copying")
    copied = moved = 0
    for batch in chunked(summary.plan, config.batch_files):
        written: list[Planned] = []
        for item in batch:
            if item.action == "finish-move":
                written.append(item)
                continue
            try:
                _write_verified(item, root, mode)
                written.append(item)
            except (_VerifyError, OSError) as exc:
                reason = str(exc) if isinstance(exc, _VerifyError) else f"{type(exc).__name__}: {exc.strerror or exc}"
                log.warning("not copied: %s: %s", item.source, reason)
                summary.failures.append((item.source, reason))
            progress.advance()
        to_record = [i for i in written if i.action == "copy"]
        if to_record:
            ingest_paths(engine, [str(i.dest) for i in to_record], settings=settings)
        with session_scope(engine) as session:
            recorded = _recorded(session, written)
        for item in written:
            if str(item.dest) not in recorded:
                summary.failures.append((str(item.dest), "written but not recorded in the catalogue; source kept"))
                continue
            if item.action == "copy":
                copied += 1
            if mode != "move":
                continue
            if item.action == "finish-move" and os.path.exists(item.source):
                if os.path.islink(item.dest) or os.path.samefile(item.dest, item.source):
                    summary.failures.append((item.source, f"{item.dest} is a link to it, not a copy; source kept"))
                    continue
                if sha256_file(item.dest) != item.sha256:
                    summary.failures.append((item.source, f"its copy {item.dest} does not verify; source kept"))
                    continue
            if os.path.exists(item.source):
                os.unlink(item.source)
                moved += 1
            with session_scope(engine, write=True) as session:
                _retire_source(session, item)
    progress.finish()
    summary.copied = copied
    summary.moved = moved
    return summary


def copyback(
    engine: Engine,
    selection: Selection,
    dest: str | Path,
    *,
    mode: str = "copy",
    dry_run: bool = False,
    config: GatherConfig | None = None,
    settings: Settings | None = None,
    template: str | None = None,
    progress: Progress | None = None,
    lock_timeout_s: float | None = None,
) -> CopybackSummary:
    """Gather the frames of ``selection`` into ``dest``, one file per exposure.

    A real run holds ``dest``'s lock (:func:`hold_destination`) from its start to its end:
    it first finishes what an interrupted run left (:func:`recover_destination`), then plans
    and copies. A dry run takes no lock and writes nothing; nor does a run whose selection
    matches no frame (``dest`` is not created).

    Parameters
    ----------
    engine : Engine
        The catalogue.
    selection : Selection
        What to gather (target, filter, DATE-OBS range, kind, position).
    dest : str or Path
        The destination folder; created when needed.
    mode : {'copy', 'link', 'move'}
        Copy the bytes; make a symbolic link to the source; or copy, then delete the source
        once the verified copy is recorded.
    dry_run : bool
        Only plan: nothing is written to disk or to the catalogue.
    config : GatherConfig, optional
        Default :func:`load_gather_config`.
    settings : Settings, optional
        Passed to the ingest that records the new copies.
    template : str, optional
        Destination name template (default ``config.template``).
    progress : Progress, optional
    lock_timeout_s : float, optional
        Seconds to wait while another run holds ``dest``'s lock: None (default) waits as long
        as it takes, 0 not at all.

    Returns
    -------
    CopybackSummary

    Raises
    ------
    ValueError
        Unknown ``mode``.
    UnsafePathError
        The template leads outside ``dest``.
    ConfigError
        Bad template or configuration.
    DestinationBusyError
        Another run held ``dest``'s lock for longer than ``lock_timeout_s``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    settings = settings or load_settings()
    config = config or load_gather_config(settings)
    check_template(template or config.template)
    root = Path(dest).expanduser().absolute()
    if dry_run or not root.exists():  # a selection that matches nothing creates no folder
        with session_scope(engine) as session:
            summary = plan_copyback(session, selection, root, mode=mode, config=config, template=template)
        summary.dry_run = dry_run
        if dry_run or not summary.frames:
            return summary
    with hold_destination(root, timeout_s=lock_timeout_s):
        removed, found = recover_destination(engine, root, settings=settings)
        with session_scope(engine) as session:
            summary = plan_copyback(session, selection, root, mode=mode, config=config, template=template)
        summary.temp_removed, summary.recorded_found = removed, found
        if summary.plan:
            execute_plan(engine, summary, root, mode=mode, config=config, settings=settings, progress=progress)
    return summary
