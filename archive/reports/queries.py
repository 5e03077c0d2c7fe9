"""Named report queries: ``queries/<name>.sql`` files with a title, a description and bound
parameters, run on either backend and returned as DataFrames (after datasette's canned
queries).

File format: leading comment lines ``-- title: ...``, ``-- description: ...`` (may repeat to
continue), ``-- param: name = default | help`` (default optional; no default means NULL),
then one SQL statement using ``:name`` placeholders. Parameters are always bound, never
formatted into the SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from archive.errors import QueryError
from archive.resources import resource_dir

if TYPE_CHECKING:
    import pandas as pd

_META = re.compile(r"^--\s*(title|description|param)\s*:\s*(.*)$")
_PARAM = re.compile(r"^(\w+)\s*(?:=\s*([^|]*?))?\s*(?:\|\s*(.*))?$")


@dataclass(frozen=True)
class NamedQuery:
    """One ``queries/*.sql`` file.

    Attributes
    ----------
    params : dict
        Name -> (default or None, help text).
    """

    name: str
    title: str
    description: str
    sql: str
    params: dict[str, tuple[str | None, str]] = field(default_factory=dict)


def parse_query(path: Path) -> NamedQuery:
    """Read one query file.

    Raises
    ------
    QueryError
        The file has no title or no SQL.
    """
    title, description, params, body = "", [], {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        meta = _META.match(line.strip())
        if meta and not body:
            kind, value = meta.groups()
            if kind == "title":
                title = value.strip()
            elif kind == "description":
                description.append(value.strip())
            else:
                match = _PARAM.match(value.strip())
                if not match:
                    raise QueryError(f"{path}: bad param line {line!r}")
                name, default, help_text = match.groups()
                params[name] = (default or None, help_text or "")
        elif line.strip() or body:
            body.append(line)
    sql = "\n".join(body).strip().rstrip(";")
    if not title or not sql:
        raise QueryError(f"{path}: a named query needs a '-- title:' line and a SQL statement")
    return NamedQuery(path.stem, title, " ".join(description), sql, params)


def load_queries(folder: Path | None = None) -> dict[str, NamedQuery]:
    """Every named query in ``folder`` (default the bundled ``queries/``), by name."""
    folder = folder or resource_dir("queries")
    return {path.stem: parse_query(path) for path in sorted(Path(folder).glob("*.sql"))}


def run_query(session: Session, name: str, params: dict[str, str] | None = None,
              folder: Path | None = None) -> pd.DataFrame:
    """Run the named query with bound parameters and return its rows.

    Raises
    ------
    QueryError
        No query of that name, or a parameter the query does not declare.
    """
    queries = load_queries(folder)
    if name not in queries:
        raise QueryError(f"no report named {name!r}; available: {', '.join(queries) or 'none'}")
    query = queries[name]
    given = dict(params or {})
    unknown = set(given) - set(query.params)
    if unknown:
        raise QueryError(f"report {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(query.params) or 'none'}")
    bound = {key: given.get(key, default) for key, (default, _help) in query.params.items()}
    result = session.execute(text(query.sql), bound)
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(result.all(), columns=list(result.keys()))
