"""Selecting frames: the usual filters as SQL, and the frames' files.

:func:`frame_query` is the one place the usual filters (type, filter, night, target,
instrument, time range, exposure range, folder, the sky positions: cone and covers, and the quality
verdict) become SQL; the CLI, the reports and the
later steps (masters, reduction, copyback, projects) build on it. :func:`target_key` is the
one folding of target names, used to store them (ingest) and to look them up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Select, and_, func, or_, select, text
from sqlalchemy.orm import Session

from archive.config import InstrumentName
from archive.db.bulk import chunked
from archive.db.models import Copy, Frame, FrameMeasurement, Instrument, QualityFlag, QualityOverride
from archive.db.targets import resolve_target

_NOT_KEY = re.compile(r"[^a-z0-9]+")


def target_key(target: str | None) -> str | None:
    """Fold a target name for loose matching: 'M 31', 'M31' and 'm-31' all give 'm31'."""
    if not target:
        return None
    return _NOT_KEY.sub("", target.lower()) or None


def folder_prefix(folder: str | Path) -> str:
    """The absolute path of ``folder`` ending with a separator: the prefix of the paths under it."""
    return str(Path(folder).absolute()).rstrip(os.sep) + os.sep


@dataclass(frozen=True)
class FrameFilter:
    """The usual frame filters; ``None`` means no constraint.

    Attributes
    ----------
    image_type : str
        Normalized type (bias, dark, flat, light, dark_flat, arc, master_*, ...).
    filter_name : str
        Filter, compared case-insensitively.
    night : date
        Local observing night.
    target : str
        Target, matched loosely ('M 31' matches 'M31' and 'm31') and across catalogues
        ('NGC 4736' matches 'M 94', :func:`archive.db.targets.resolve_target`); a frame whose
        footprint contains the target's catalogued position matches too, whatever its OBJECT.
    instrument : str
        Instrument name or model, compared case-insensitively: a model names all its units
        ('Seestar S50' is every Seestar S50, 'Seestar S50 S50_1d3fe189' one of them).
    since, until : datetime
        ``since <= date_obs < until`` (UTC).
    min_exposure_s, max_exposure_s : float
        Exposure time range in s, inclusive.
    include_duplicates : bool
        Keep frames flagged as duplicate exposures (default True).
    folder : str or Path
        Only frames with a current copy under this folder (given or absolute path).
    cone : (ra_deg, dec_deg, radius_deg)
        Only frames whose footprint comes within the radius of the position (deg; the
        footprint overlaps the cone), :func:`archive.db.sky.cone_condition`.
    covers : (ra_deg, dec_deg)
        Only frames whose footprint contains the position (deg),
        :func:`archive.db.sky.covers_condition`.
    verdict : {'accepted', 'rejected'}
        Only frames of this quality verdict (:func:`verdict_condition`): rejected is the
        latest override of the frame saying reject, or no override and a stored flag with
        action ``reject`` on its measurement; accepted is every other frame (a frame never
        measured is accepted).
    measurement_version : str
        With ``verdict``: only flags of measurements of this version count (the current
        version, :func:`archive.reduce.measure.measurement_version`); default any version.
    current_only : bool
        Leave out products remade since (``frames.superseded_by_id`` set: a calibrated frame
        calibrated again with other masters, the registered frames and stacks remade after
        it): what copyback and projects gather. Raw frames are always current.
    """

    image_type: str | None = None
    filter_name: str | None = None
    night: dt.date | None = None
    target: str | None = None
    instrument: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_exposure_s: float | None = None
    max_exposure_s: float | None = None
    include_duplicates: bool = True
    folder: str | Path | None = None
    cone: tuple[float, float, float] | None = None
    covers: tuple[float, float] | None = None
    verdict: str | None = None
    measurement_version: str | None = None
    current_only: bool = False


#: The verdicts :attr:`FrameFilter.verdict` takes.
VERDICTS = ("accepted", "rejected")


def verdict_condition(verdict: str, measurement_version: str | None = None):
    """A condition on ``frames``: the frame's quality verdict is ``verdict``.

    The verdict as :func:`archive.reduce.quality.verdicts` gives it from the stored rows: the
    latest override of the frame (``quality_overrides``, the highest id) wins; without one a
    flag with action ``reject`` (``quality_flags``) on a measurement of the frame (of
    ``measurement_version`` when given) rejects it. The flags are those of the frame's last
    judgement (``archive measure`` judges again after a change of the rules).

    Raises
    ------
    ValueError
        ``verdict`` is not accepted or rejected.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    override = (select(QualityOverride.verdict).where(QualityOverride.frame_id == Frame.id)
                .order_by(QualityOverride.id.desc()).limit(1).scalar_subquery())
    flagged = select(QualityFlag.id).join(FrameMeasurement, FrameMeasurement.id == QualityFlag.measurement_id).where(
        QualityFlag.frame_id == Frame.id, QualityFlag.action == "reject")
    if measurement_version is not None:
        flagged = flagged.where(FrameMeasurement.version == measurement_version)
    flagged = flagged.exists()
    if verdict == "rejected":
        return or_(override == "reject", and_(override.is_(None), flagged))
    return or_(override == "accept", and_(override.is_(None), ~flagged))


def target_condition(name: str):
    """A condition on ``frames``: the frame is of target ``name`` (any alias, or its footprint
    contains the target's catalogued position)."""
    target = resolve_target(name)
    keys = sorted({k for k in (target_key(a) for a in target.aliases) if k})
    by_name = Frame.target_key.in_(keys)
    if target.ra_deg is None or target.dec_deg is None:
        return by_name
    from archive.db.sky import covers_condition  # numpy and astropy-healpix: imported on use

    return or_(by_name, covers_condition(target.ra_deg, target.dec_deg))


def frame_query(filters: FrameFilter | None = None, *columns) -> Select:
    """A ``SELECT`` of ``columns`` (default the :class:`Frame` entity) over frames, with filters."""
    f = filters or FrameFilter()
    query = select(*(columns or (Frame,))).select_from(Frame).outerjoin(Instrument, Frame.instrument_id == Instrument.id)
    conditions = []
    if f.image_type:
        conditions.append(Frame.image_type == f.image_type)
    if f.filter_name:
        conditions.append(func.lower(Frame.filter_name) == f.filter_name.lower())
    if f.night:
        conditions.append(Frame.night == f.night)
    if f.target:
        conditions.append(target_condition(f.target))
    if f.instrument:
        conditions.append(or_(func.lower(Instrument.name) == f.instrument.lower(),
                              func.lower(Instrument.model) == f.instrument.lower()))
    if f.since:
        conditions.append(Frame.date_obs >= f.since)
    if f.until:
        conditions.append(Frame.date_obs < f.until)
    if f.min_exposure_s is not None:
        conditions.append(Frame.exposure_time_s >= f.min_exposure_s)
    if f.max_exposure_s is not None:
        conditions.append(Frame.exposure_time_s <= f.max_exposure_s)
    if not f.include_duplicates:
        conditions.append(Frame.duplicate_of_id.is_(None))
    if f.folder is not None:
        conditions.append(select(Copy.id).where(
            Copy.frame_id == Frame.id, Copy.is_current, Copy.path.startswith(folder_prefix(f.folder), autoescape=True)
        ).exists())
    if f.cone is not None or f.covers is not None:
        from archive.db.sky import cone_condition, covers_condition  # numpy, astropy-healpix: on use

        if f.cone is not None:
            conditions.append(cone_condition(*f.cone))
        if f.covers is not None:
            conditions.append(covers_condition(*f.covers))
    if f.verdict is not None:
        conditions.append(verdict_condition(f.verdict, f.measurement_version))
    if f.current_only:
        conditions.append(Frame.superseded_by_id.is_(None))
    return query.where(and_(*conditions)) if conditions else query


def canonical_path_column():
    """A scalar subquery: the path of the frame's current canonical copy (NULL when none)."""
    return (
        select(Copy.path)
        .where(Copy.frame_id == Frame.id, Copy.is_current, Copy.is_canonical)
        .limit(1)
        .scalar_subquery()
    )


def current_copies_column():
    """A scalar subquery: how many current copies the frame has."""
    return select(func.count(Copy.id)).where(Copy.frame_id == Frame.id, Copy.is_current).scalar_subquery()


def canonical_paths(session: Session, frame_ids: Iterable[int]) -> dict[int, str]:
    """frame id -> path of its current canonical copy (frames without one are left out)."""
    out: dict[int, str] = {}
    for batch in chunked(set(frame_ids)):
        rows = session.execute(select(Copy.frame_id, Copy.path).where(
            Copy.frame_id.in_(batch), Copy.is_current, Copy.is_canonical))
        out.update(rows.all())
    return out


def instrument_names(session: Session, instrument_ids: Iterable[int | None] | None = None) -> dict[int, InstrumentName]:
    """Instrument id -> name, of ``instrument_ids`` (None among them is ignored) or of every instrument.

    The one look-up of instrument names by id (``frames.instrument_id``). Each name is an
    :class:`archive.config.InstrumentName` carrying the unit's model, so that per-instrument
    configuration (:func:`archive.config.for_instrument`) applies to every unit of a model.
    """
    query = select(Instrument.id, Instrument.name, Instrument.model)
    if instrument_ids is not None:
        ids = {i for i in instrument_ids if i is not None}
        if not ids:
            return {}
        rows = [row for batch in chunked(ids) for row in session.execute(query.where(Instrument.id.in_(batch)))]
    else:
        rows = session.execute(query).all()
    return {i: InstrumentName(name, model) for i, name, model in rows}


def lights_under(session: Session, folder: str | Path) -> list[int]:
    """Raw lights (not duplicate exposures) with a current copy under ``folder``, by id."""
    query = frame_query(FrameFilter(image_type="light", include_duplicates=False, folder=folder), Frame.id)
    return list(session.scalars(query.order_by(Frame.id)))


def catalogue_state(session: Session) -> tuple:
    """A token that changes whenever the catalogue changes: the largest id of frames, copies,
    ingest runs and problems, reductions, measurements, flags and overrides (each an index
    look-up, on both backends), and a mark of rows changed in place (a master flagged bad, a
    reduction finished, a problem resolved; :func:`_changes_in_place`). For caching what is
    computed over the whole catalogue (the web view's nights).
    """
    from archive.db.models import (
        Copy, FrameMeasurement, IngestProblem, IngestRun, QualityFlag, QualityOverride, Reduction,
    )

    columns = [func.max(c) for c in (Frame.id, Copy.id, IngestRun.id, IngestProblem.id, Reduction.id,
                                     FrameMeasurement.id, QualityFlag.id, QualityOverride.id)]
    return (*session.execute(select(*[select(c).scalar_subquery() for c in columns])).one(), _changes_in_place(session))


def _changes_in_place(session: Session) -> tuple:
    """What moves when any transaction commits a change to the catalogue's own tables.

    SQLite: the size and modification time of the database file and of its write-ahead log
    (every commit appends to the log, a checkpoint rewrites the file; readers change neither).
    PostgreSQL: the rows inserted, updated and deleted in the database's own schema, from the
    cumulative statistics (``pg_stat_user_tables``; a committing session reports them at the
    end of its transaction, at most a second or so later when it is busy: PostgreSQL 15
    documentation, "The Cumulative Statistics System"); temporary tables are left out.
    An in-memory SQLite catalogue has no file: ``()`` (only new rows change the token).
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return tuple(session.execute(
            select(func.coalesce(func.sum(text("n_tup_ins + n_tup_upd + n_tup_del")), 0))
            .select_from(text("pg_stat_user_tables")).where(text("schemaname = current_schema()"))
        ).one())
    database = bind.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return ()
    marks = []
    for path in (database, database + "-wal"):
        try:
            info = os.stat(path)
            marks += [info.st_size, info.st_mtime_ns]
        except OSError:
            marks += [None, None]
    return tuple(marks)


@contextlib.contextmanager
def selection_table(session: Session, name: str, filters: FrameFilter | None) -> Iterator[str]:
    """A temporary table ``name`` (one column ``frame_id``) holding the ids of the frames that
    ``filters`` selects (none when ``filters`` is None), for SQL written elsewhere to join:
    a named report's sky parameter (:mod:`archive.reports.queries`).

    The table is filled by one ``INSERT ... SELECT`` on the server and dropped on exit.

    Parameters
    ----------
    session : Session
    name : str
        The table's name, a plain identifier.
    filters : FrameFilter or None

    Yields
    ------
    str
        ``name``.
    """
    from sqlalchemy import Column, Integer, MetaData, Table, insert

    metadata = MetaData()
    table = Table(name, metadata, Column("frame_id", Integer, primary_key=True), prefixes=["TEMPORARY"])
    connection = session.connection()
    table.create(connection)  # a TEMPORARY scratch table of one query, not schema
    try:
        if filters is not None:
            connection.execute(insert(table).from_select(["frame_id"], frame_query(filters, Frame.id).distinct()))
        yield name
    finally:
        metadata.drop_all(connection)
