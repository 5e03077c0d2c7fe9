"""Opening the catalogue: engine, connection settings, sessions.

A catalogue is named by a SQLAlchemy URL or by a plain path to a SQLite file. SQLite runs in
WAL mode with a busy timeout so that a second process can read while an ingest writes; write
transactions start with ``BEGIN IMMEDIATE`` so that two writers queue instead of failing on
a lock upgrade. A new SQLite file is created at the current schema on first use; any other
database must be brought to the current schema with ``archive db upgrade``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, configure_mappers

from archive.config import default_database_path
from archive.db.base import SCHEMA_REVISION
from archive.errors import DatabaseError

WRITE = "archive_write"


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


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001 - DB-API objects
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


def schema_engine(url: str | Path | None = None) -> Engine:
    """An engine for schema commands (``archive db``): no schema check, and the folder of a new
    SQLite file is created."""
    full_url = database_url(url)
    if full_url.startswith("sqlite"):
        Path(make_url(full_url).database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(full_url)


def open_catalogue(
    url: str | Path | None = None, *, busy_timeout_s: float = 60.0, create: bool = True
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
        Create a missing or empty SQLite file at the current schema (alembic ``upgrade head``).

    Returns
    -------
    Engine

    Raises
    ------
    DatabaseError
        The server cannot be reached, or the schema is not at the current revision (the message
        says to run ``archive db upgrade``).
    """
    full_url = database_url(url)
    is_sqlite = full_url.startswith("sqlite")
    if is_sqlite:
        Path(make_url(full_url).database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(full_url, pool_pre_ping=not is_sqlite)
    if is_sqlite:
        _configure_sqlite(engine, busy_timeout_s)
    try:
        revision = current_revision(engine)
        if revision is None and create and is_sqlite and not inspect(engine).get_table_names():
            from archive.db.migrate import upgrade  # alembic: imported only when it has work

            upgrade(engine)
            revision = current_revision(engine)
    except OperationalError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open the catalogue {make_url(full_url)!r}: {exc.orig}") from exc
    configure_mappers()  # once, at open: ORM set-up errors surface here, not mid-ingest
    if revision != SCHEMA_REVISION:
        engine.dispose()
        raise DatabaseError(
            f"the catalogue {make_url(full_url)!r} is at schema revision {revision or 'none'}, "
            f"this version of archive needs {SCHEMA_REVISION}: run 'archive db upgrade'"
        )
    return engine


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
        The unit of work writes: on SQLite its transaction takes the write lock at once
        (``BEGIN IMMEDIATE``), so concurrent writers wait their turn instead of failing.
    """
    bind = engine.execution_options(**{WRITE: True}) if write else engine
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session
