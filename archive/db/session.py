"""Opening the catalogue: engine, connection settings, sessions.

A catalogue is named by a SQLAlchemy URL or by a plain path to a SQLite file. SQLite runs in
WAL mode with a busy timeout so that a second process can read while an ingest writes; write
transactions start with ``BEGIN IMMEDIATE`` so that two writers queue instead of failing on
a lock upgrade. A catalogue is created (at the current schema) only when asked: a missing
SQLite file, or a database with no tables at all, by ``ingest``; a reading command on a
catalogue that does not exist says so. A SQLite file this process cannot write is opened
read-only. A database at an older schema is never upgraded silently: ``archive db upgrade``.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, configure_mappers

from archive.config import default_database_path
from archive.db.base import SCHEMA_REVISION
from archive.errors import DatabaseError

log = logging.getLogger(__name__)

WRITE = "archive_write"
#: Key of the PostgreSQL advisory lock every write transaction takes first (see :func:`session_scope`).
WRITE_LOCK_KEY = 0x61726368  # "arch"
#: errno values that mean "this storage cannot take more writes": no space, quota, read-only.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
#: Driver messages of the same conditions (SQLite, PostgreSQL), lower case.
_STORAGE_MESSAGES = ("database or disk is full", "no space left on device", "disk full", "could not extend file",
                     "readonly database", "read-only", "quota exceeded")


def database_url(value: str | Path | None) -> str:
    """Turn a SQLAlchemy URL, a SQLite path or nothing (the default file) into a URL.

    Raises
    ------
    DatabaseError
        ``value`` looks like a URL but SQLAlchemy cannot parse it.
    """
    text = str(value) if value else str(default_database_path())
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {text!r}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # the driver the package installs
    return url.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine, busy_timeout_s: float, read_only: bool = False,
                      autocheckpoint: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001 - DB-API objects
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        if not read_only:  # setting the journal mode writes to the file
            cursor.execute("PRAGMA journal_mode=WAL")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


def _create_engine(full_url: str, **kwargs) -> Engine:
    """``create_engine``, with an unknown database kind or a missing driver as :class:`DatabaseError`."""
    try:
        return create_engine(full_url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"not a database URL this archive can open: {_shown(full_url)} ({exc})") from exc


def _shown(full_url: str | URL) -> str:
    """A URL as the user may see it: the password hidden, a SQLite file as its path."""
    url = make_url(full_url) if isinstance(full_url, str) else full_url
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        if conn.get_execution_options().get(WRITE):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


def storage_failure(exc: BaseException) -> str | None:
    """One line saying why the catalogue or a destination cannot be written (disk or
    tablespace full, quota, read-only), or ``None`` when ``exc`` is not such a failure.

    The driver's own text is reduced to its first line (no SQL, no parameters); the text of
    an :class:`OSError` is its ``strerror`` and file name, once.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text_ = (str(exc.orig).strip().splitlines() or [""])[0].strip()
        lower = text_.lower()
        if any(m in lower for m in _STORAGE_MESSAGES) or getattr(exc.orig, "sqlstate", None) in ("53100", "25006"):
            return f"the catalogue cannot be written: {text_}"
        return None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or os.strerror(exc.errno)}"
    return None


def schema_engine(url: str | Path | None = None) -> Engine:
    """An engine for schema commands (``archive db``): no schema check, and the folder of a new
    SQLite file is created.

    Raises
    ------
    DatabaseError
        ``url`` names a kind of database this archive cannot open.
    """
    full_url = database_url(url)
    engine = _create_engine(full_url)
    if full_url.startswith("sqlite"):
        Path(make_url(full_url).database).parent.mkdir(parents=True, exist_ok=True)
    return engine


def _sqlite_read_only(path: Path) -> bool:
    """Whether this process cannot write the SQLite file ``path`` (or the folder its WAL files
    go in): tried, not inferred from mode bits, which do not bind every user."""
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno == 30  # EROFS: a read-only file system
    os.close(fd)
    return not os.access(path.parent, os.W_OK)


def _upgrade_hint(full_url: str) -> str:
    """The command that brings this catalogue to the current schema, ready to paste."""
    return f"archive --db {shlex.quote(_shown(full_url))} db upgrade"


def open_catalogue(
    url: str | Path | None = None, *, busy_timeout_s: float = 60.0, create: bool = True, autocheckpoint: bool = True
) -> Engine:
    """Open the catalogue database and check its schema.

    Parameters
    ----------
    url : str or Path, optional
        SQLAlchemy URL (``postgresql+psycopg://user@host/db``) or SQLite file path; default
        :func:`archive.config.default_database_path`.
    busy_timeout_s : float
        Seconds a SQLite connection waits for another process's lock.
    create : bool
        Create the catalogue at the current schema (alembic ``upgrade head``) when it does not
        exist: a missing SQLite file (and its folder), or a database with no tables at all
        (SQLite or PostgreSQL). A database with tables is never changed here. Reading commands
        pass ``False``.
    autocheckpoint : bool
        Whether a commit that grew a SQLite catalogue's write-ahead log past 1,000 pages
        copies it into the database file (SQLite's default). Ingest's worker processes pass
        ``False``: their process that waits for them checkpoints instead (:func:`checkpoint`),
        so that the copy and its two fsyncs run beside the writes, not inside them.

    Returns
    -------
    Engine
        Read-only (SQLite URI ``mode=ro``) when the SQLite file cannot be written.

    Raises
    ------
    DatabaseError
        The URL names no database this archive can open, the server cannot be reached, the
        file is not a SQLite database, the catalogue does not exist (``create=False``), or
        the schema is not at the current revision (the message gives the ``archive --db URL
        db upgrade`` command).
    """
    full_url = database_url(url)
    is_sqlite = full_url.startswith("sqlite")
    read_only = False
    connect_url: str | URL = full_url
    if is_sqlite:
        path = Path(make_url(full_url).database)
        if not path.exists():
            if not create:
                raise DatabaseError(f"no catalogue at {path}: 'archive ingest' creates one (or give --db)")
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path.is_dir():
            raise DatabaseError(f"{path} is a folder, not a SQLite catalogue")
        elif _sqlite_read_only(path):
            read_only = True
            connect_url = f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
    engine = _create_engine(connect_url, pool_pre_ping=not is_sqlite)
    if is_sqlite:
        _configure_sqlite(engine, busy_timeout_s, read_only, autocheckpoint)
    elif engine.dialect.name == "postgresql":
        _configure_postgresql(engine)
    try:
        revision = current_revision(engine)
        if revision is None and not inspect(engine).get_table_names():
            if not create:
                raise DatabaseError(f"the catalogue {_shown(full_url)} is empty (no tables): 'archive ingest' "
                                    f"creates the schema, as does: {_upgrade_hint(full_url)}")
            if read_only:
                raise DatabaseError(f"the catalogue {_shown(full_url)} is empty and read-only")
            from archive.db.migrate import upgrade  # alembic: imported only when it has work

            upgrade(engine)
            revision = current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        raise DatabaseError(f"cannot open the catalogue {_shown(full_url)}: {first_line}") from exc
    except DatabaseError:
        engine.dispose()
        raise
    configure_mappers()  # once, at open: ORM set-up errors surface here, not mid-ingest
    if revision != SCHEMA_REVISION:
        engine.dispose()
        raise DatabaseError(
            f"the catalogue {_shown(full_url)} is at schema revision {revision or 'none'}, "
            f"this version of archive needs {SCHEMA_REVISION}; to upgrade it: {_upgrade_hint(full_url)}"
        )
    return engine


def checkpoint(engine: Engine) -> None:
    """Copy what a SQLite catalogue's write-ahead log holds into the database file, as far as
    no reader still needs it; nothing for other databases.

    A passive checkpoint (SQLite's ``PRAGMA wal_checkpoint(PASSIVE)``): it takes no lock that
    a writer or reader waits for, so it can run while another process writes. Run outside any
    transaction, on a connection of its own. A checkpoint that fails (a full disk) loses
    nothing, as the log keeps what it could not copy: it is logged, and the writes that come
    next report the failure.
    """
    if engine.dialect.name != "sqlite":
        return
    connection = engine.raw_connection()
    try:
        connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
    except engine.dialect.dbapi.Error as exc:
        log.warning("the write-ahead log was not checkpointed: %s", exc)
    finally:
        connection.close()


def current_revision(engine: Engine) -> str | None:
    """The schema revision alembic recorded (``None`` for a database never migrated), read
    with plain SQL so that opening a catalogue needs no alembic import.

    Raises
    ------
    sqlalchemy.exc.OperationalError
        The database cannot be reached (callers turn it into :class:`DatabaseError`).
    """
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any exception.

    Parameters
    ----------
    write : bool
        The unit of work writes: its transaction takes the catalogue's write lock at once
        (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock), so
        concurrent writers wait their turn instead of clashing and being redone.
    """
    bind = engine.execution_options(**{WRITE: True}) if write else engine
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session
