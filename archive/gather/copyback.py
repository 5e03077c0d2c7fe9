"""Copyback: gather a target's frames from every night into one folder, once per exposure.

The frames and their exposures are chosen by :mod:`archive.gather.exposures`, their names by
:mod:`archive.gather.naming`, with the settings of :mod:`archive.gather.config`; this module
plans and does the transfer. The rules (issue 5, ``shared/DESIGN.md`` "Identity" and
"Safety"):

* **Never overwrite, never twice.** An exposure of which any frame already has a copy under the
  destination (known from the catalogue's copies, the file present) is not copied again, so a
  re-run is a no-op. A name that exists gets the next ``{seq}`` number.
* **Verified, then recorded.** Each file is written to a hidden temporary name beside its
  destination while the source is hashed, re-read and checked against the frame's SHA-256,
  then linked to its final name (which fails rather than overwrite) and recorded by
  :func:`archive.ingest.ingest_paths` as a new copy of the frame. With ``mode='move'`` the
  source is deleted only after the verified copy is recorded; the catalogue's row of the
  source copy then stops being current and the new copy becomes canonical.
* **One run per destination, interrupted runs finished.** A real run holds the destination's
  lock from its start to its last record and begins by finishing what an interrupted run left
  there (:mod:`archive.gather.destination`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, Row, select, update
from sqlalchemy.orm import Session

from archive.config import Settings, load_settings
from archive.db.bulk import chunked
from archive.db.frames import folder_prefix
from archive.db.models import Copy
from archive.db.session import session_scope
from archive.files import fsync_dir, sha256_file, temporary_path
from archive.gather.config import GatherConfig, check_template, load_gather_config
from archive.gather.destination import hold_destination, recover_destination
from archive.gather.exposures import ExposureSelection, Selection, duplicate_reason, select_exposures
from archive.gather.naming import free_destination, name_fields
from archive.ingest.ingest import ingest_paths
from archive.progress import NoProgress, Progress

log = logging.getLogger(__name__)

MODES = ("copy", "link", "move")

_CHUNK = 1 << 20


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
        Exposures already selected (default :func:`archive.gather.exposures.select_exposures` of ``selection``).
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
    under = folder_prefix(root)
    for group in groups.groups:
        inside = [c for r in group for c in copies.get(r.id, []) if c.path.startswith(under) and os.path.lexists(c.path)]
        outside = {r.id: [c for c in copies.get(r.id, []) if not c.path.startswith(under)] for r in group}
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
            path = free_destination(root, template, fields, taken=reserved)
            reserved.add(path)
            label = f"{kept.instrument or '?'} {kept.date_obs.isoformat() if kept.date_obs else '?'}"
            summary.plan.append(Planned(kept.id, kept.sha256, source.path, source.id, source.is_canonical,
                                        path, fields, template, "copy", label))
            summary.same_bytes += len(outside[kept.id]) - 1
        for row in group:
            if row is not kept:
                summary.duplicates[duplicate_reason(kept, row)] += 1
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
                item.dest = free_destination(root, item.template, item.fields)
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
                item.dest = free_destination(root, item.template, item.fields)
            except OSError:  # no hard links on this file system: check, then rename
                if os.path.lexists(item.dest):
                    item.dest = free_destination(root, item.template, item.fields)
                    continue
                os.rename(tmp, item.dest)
                break
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(item.dest.parent)
    return item.dest


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

    A real run holds ``dest``'s lock (:func:`archive.gather.destination.hold_destination`) from
    its start to its end: it first finishes what an interrupted run left
    (:func:`archive.gather.destination.recover_destination`), then plans and copies. A dry run
    takes no lock and writes nothing; nor does a run whose selection matches no frame (``dest``
    is not created).

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
        Default :func:`archive.gather.config.load_gather_config`.
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
