"""Bulk work whose mechanism differs between SQLite and PostgreSQL: loading rows into a
(usually temporary) table (``COPY`` on PostgreSQL, one ``executemany`` elsewhere), and a planner
hint for index seeks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice

from sqlalchemy import Connection, CursorResult, Executable, Table


def insert_rows(connection: Connection, table: Table, rows: Sequence[tuple]) -> None:
    """Insert ``rows`` (tuples in the order of ``table.columns``) as fast as the backend allows.

    PostgreSQL: ``COPY ... FROM STDIN`` through psycopg; other backends: one DB-API
    ``executemany`` of the compiled ``INSERT``. Values are plain Python (int, float, str, bool,
    None); the caller converts datetimes.
    """
    if not rows:
        return
    names = [c.name for c in table.columns]
    if connection.dialect.name == "postgresql":
        quoted = ", ".join(connection.dialect.identifier_preparer.quote(n) for n in names)
        target = connection.dialect.identifier_preparer.format_table(table)
        cursor = connection.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {target} ({quoted}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    compiled = table.insert().compile(dialect=connection.dialect)
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup]
        if order == list(range(len(names))):  # the table's order (always, for a plain INSERT): the rows as they are
            params = rows
        else:
            params = [tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(names, row)) for row in rows]
    connection.exec_driver_sql(str(compiled), params)


def execute_uncached(connection: Connection, statement: Executable) -> CursorResult:
    """Execute ``statement`` without keeping its compiled form in the engine's cache.

    For statements on temporary tables named for one use (a unique name each time): they
    never run again, and each cached one would keep its tables' objects alive in the engine's
    cache (up to 500 statements), which slows every later garbage collection of the process
    (a web server's requests).

    Parameters
    ----------
    connection : Connection
    statement : Executable
        A SQLAlchemy statement (``select(...)``, ...).

    Returns
    -------
    CursorResult
        As :meth:`Connection.execute` returns it.
    """
    return connection.execute(statement, execution_options={"compiled_cache": None})


@contextmanager
def index_seeks(connection: Connection) -> Iterator[None]:
    """Run the enclosed statements by index seeks: ordered index scans and nested loops.

    For correlated ``ORDER BY ... LIMIT 1`` subqueries over a freshly loaded temporary table,
    and for joining a few thousand rows to a large table by primary key, PostgreSQL's planner
    prefers bitmap scans plus sorts and hash joins over a full scan, which read every row; an
    ordered index scan stops at the first row that qualifies and a nested loop reads only the
    rows asked for. SQLite needs no hint. The settings are restored afterwards (they only
    ever apply to the current transaction on PostgreSQL).
    """
    if connection.dialect.name != "postgresql":
        yield
        return
    settings = ("enable_bitmapscan", "enable_hashjoin", "enable_mergejoin")

    def set_local(values) -> None:  # SET LOCAL of every setting in one round trip (set_config(..., true))
        connection.exec_driver_sql("SELECT " + ", ".join(
            f"set_config('{name}', '{'on' if value == 'on' else 'off'}', true)"
            for name, value in zip(settings, values)))

    read = ", ".join(f"current_setting('{name}')" for name in settings)
    previous = connection.exec_driver_sql(f"SELECT {read}").one()
    set_local(["off"] * len(settings))
    try:
        yield
    finally:
        set_local(previous)


#: Values per ``IN (...)`` list: far below SQLite's 32,766 bound parameters.
IN_CHUNK = 5000


def chunked(values: Iterable, size: int = IN_CHUNK) -> Iterator[list]:
    """``values`` in lists of at most ``size``: for ``IN (...)`` lists and write batches."""
    iterator = iter(values)
    while batch := list(islice(iterator, size)):
        yield batch
