"""Named report queries: ``queries/<name>.sql`` files with a title, a description and bound
parameters, run on either backend and returned as DataFrames (after datasette's canned
queries).

File format: leading comment lines ``-- title: ...``, ``-- description: ...`` (may repeat to
continue), ``-- param: name (kind) = default | help``, then one SQL statement using ``:name``
placeholders. ``kind`` is ``text``, ``integer``, ``number`` or ``date`` (ISO 8601), or a
comma-separated list of the values allowed (``(error, warning)``); ``, required`` after it
makes the parameter compulsory. Two kinds select frames by where they are on the sky, as
``archive frames --cone/--covers`` does (:class:`archive.db.frames.FrameFilter`): ``cone``
(``RA,DEC,RADIUS``, degrees: the footprint comes within the radius) and ``covers``
(``RA,DEC``: the footprint contains the position). The SQL tests ``:name IS NULL`` (not
given) and joins the temporary table ``sky_<name>`` (column ``frame_id``) that holds the
frames selected; it is filled before the query runs and dropped after. The kind is optional (``text``), so is the default (NULL: the
query's "every ..." case). Every value given is checked against its kind before the query
runs (:func:`check_params`). Parameters are always bound, never formatted into the SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from archive.db.frames import FrameFilter, selection_table
from archive.errors import QueryError
from archive.resources import resource_dir

if TYPE_CHECKING:
    import pandas as pd

_META = re.compile(r"^--\s*(title|description|param)\s*:\s*(.*)$")
_PARAM = re.compile(r"^(\w+)\s*(?:\(([^)]*)\))?\s*(?:=\s*([^|]*?))?\s*(?:\|\s*(.*))?$")
def _numbers(count: int):
    """Text ``"a,b,..."`` -> a tuple of ``count`` floats (ValueError otherwise)."""

    def convert(value: str) -> tuple[float, ...]:
        numbers = tuple(float(v) for v in value.replace(" ", ",").split(",") if v)
        if len(numbers) != count:
            raise ValueError(value)
        return numbers

    return convert


#: Kind of a parameter -> what turns the text given into the value bound, and its name in errors.
KINDS = {
    "text": (str, "text"),
    "integer": (int, "a whole number"),
    "number": (float, "a number"),
    "date": (dt.date.fromisoformat, "a date (YYYY-MM-DD)"),
    "cone": (_numbers(3), "RA,DEC,RADIUS in degrees"),
    "covers": (_numbers(2), "RA,DEC in degrees"),
}
#: The kinds that select frames by sky position: each is a :class:`archive.db.frames.FrameFilter` field.
SKY_KINDS = ("cone", "covers")


@dataclass(frozen=True)
class ParamSpec:
    """What a query file declares of one parameter.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`; ``text`` for a list of choices.
    choices : tuple of str
        The values allowed (empty: any value of the kind).
    required : bool
        The parameter must be given (it has no default).
    """

    kind: str = "text"
    choices: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class NamedQuery:
    """One ``queries/*.sql`` file.

    Attributes
    ----------
    params : dict
        Name -> (default or None, help text).
    specs : dict
        Name -> its :class:`ParamSpec` (kind, choices, required).
    """

    name: str
    title: str
    description: str
    sql: str
    params: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    specs: dict[str, ParamSpec] = field(default_factory=dict)


def _spec(path: Path, name: str, declared: str | None) -> ParamSpec:
    words = [w.strip() for w in (declared or "").split(",") if w.strip()]
    required = "required" in words
    words = [w for w in words if w != "required"]
    if not words:
        return ParamSpec(required=required)
    if len(words) == 1 and words[0] in KINDS:
        return ParamSpec(kind=words[0], required=required)
    if any(w in KINDS for w in words):
        raise QueryError(f"{path}: parameter {name!r}: a kind ({', '.join(KINDS)}) or a list of choices, not both")
    return ParamSpec(choices=tuple(words), required=required)


def check_params(query: NamedQuery, given: dict[str, str]) -> dict[str, object]:
    """The values to bind: ``given`` checked against the query's declarations, defaults for
    the rest.

    Raises
    ------
    QueryError
        A parameter the query does not declare, a required one missing, or a value that is not
        of the declared kind or not among the choices; the message names the parameter.
    """
    unknown = sorted(set(given) - set(query.params))
    if unknown:
        raise QueryError(f"report {query.name!r} has no parameter(s) {unknown}; it takes {sorted(query.params) or 'none'}")
    bound: dict[str, object] = {}
    for name, (default, _help) in query.params.items():
        spec = query.specs.get(name, ParamSpec())
        value = given.get(name, default)
        if value is None:
            if spec.required:
                raise QueryError(f"report {query.name!r} needs --param {name}=...")
            bound[name] = None
            continue
        if spec.choices and value not in spec.choices:
            raise QueryError(f"report {query.name!r}: --param {name}={value!r} is not one of {', '.join(spec.choices)}")
        convert, what = KINDS[spec.kind]
        try:
            bound[name] = convert(value)
        except ValueError:
            raise QueryError(f"report {query.name!r}: --param {name}={value!r} is not {what}") from None
    return bound


def parse_query(path: Path) -> NamedQuery:
    """Read one query file.

    Raises
    ------
    QueryError
        The file has no title or no SQL.
    """
    title, description, params, specs, body = "", [], {}, {}, []
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
                name, declared, default, help_text = match.groups()
                params[name] = (default or None, help_text or "")
                specs[name] = _spec(path, name, declared)
        elif line.strip() or body:
            body.append(line)
    sql = "\n".join(body).strip().rstrip(";")
    if not title or not sql:
        raise QueryError(f"{path}: a named query needs a '-- title:' line and a SQL statement")
    query = NamedQuery(path.stem, title, " ".join(description), sql, params, specs)
    for name, (default, _help) in params.items():  # a default must pass its own declaration
        if default is not None:
            check_params(NamedQuery(query.name, title, "", sql, {name: (default, "")}, {name: specs[name]}), {})
    return query


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
        No query of that name, or a parameter that fails :func:`check_params`.
    """
    queries = load_queries(folder)
    if name not in queries:
        raise QueryError(f"no report named {name!r}; available: {', '.join(queries) or 'none'}")
    query = queries[name]
    bound = check_params(query, dict(params or {}))
    with contextlib.ExitStack() as tables:
        for param, spec in query.specs.items():
            if spec.kind in SKY_KINDS:
                from archive.db.sky import SkyQueryError  # numpy, astropy-healpix: imported on use

                # the frames selected, in sky_<param>; the text bound for IS NULL
                value = bound[param]
                filters = None if value is None else FrameFilter(**{spec.kind: value})
                try:
                    tables.enter_context(selection_table(session, f"sky_{param}", filters))
                except SkyQueryError as exc:
                    raise QueryError(f"report {name!r}: --param {param}: {exc}") from None
                bound[param] = None if value is None else ",".join(map(str, value))
        result = session.execute(text(query.sql), bound)
        rows, columns = result.all(), list(result.keys())
    import pandas as pd  # imported on use: a slow import

    return pd.DataFrame(rows, columns=columns)
