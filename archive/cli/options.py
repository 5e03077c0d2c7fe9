"""Reusable click options and output helpers shared by the commands."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

FORMATS = ("table", "csv", "json")


class Output(str):
    """The chosen ``--format`` (compares equal to 'table', 'csv' or 'json') and ``--columns``."""

    columns: tuple[str, ...] | None

    def __new__(cls, fmt: str, columns: tuple[str, ...] | None = None) -> Output:
        self = super().__new__(cls, fmt)
        self.columns = columns
        return self


def output_format(func: Callable) -> Callable:
    """``--format table|csv|json`` (default table) and ``--columns a,b,c``, passed as ``fmt``
    (an :class:`Output`)."""

    @functools.wraps(func)
    def wrapper(*args, fmt: str, columns: str | None, **kwargs):
        chosen = tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None
        return func(*args, fmt=Output(fmt, chosen), **kwargs)

    wrapper = click.option(
        "--columns", metavar="A,B,...",
        help="Columns to show, by name, in this order; 'list' lists them, 'all' shows every one unshortened "
        "(default: the most important that fit the terminal).",
    )(wrapper)
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Output as an aligned table, CSV or JSON (records); CSV and JSON keep every value as stored.",
    )(wrapper)


def emit(data, fmt: str, *, hidden_note: bool = True) -> None:
    """Print a table in the chosen format (:mod:`archive.cli.table`).

    ``data`` is a pandas DataFrame or ``(columns, rows)``. An empty table says so on stderr;
    columns left out to fit the terminal are named on stderr.
    """
    from archive.cli import table

    names, rows = table.as_rows(data)
    requested = getattr(fmt, "columns", None)
    if requested == ("list",):
        left_out = set(table.render_table(names, rows, width=table.terminal_width())[1])
        click.echo(f"{'column':<20} {'heading':<20} shown by default")
        for name in names:
            heading = table.COLUMNS[name].heading if name in table.COLUMNS else name
            click.echo(f"{name:<20} {heading:<20} {'no' if name in left_out else 'yes'}")
        return
    try:
        chosen = table.choose_columns(names, requested)
    except table.ColumnError as exc:
        raise click.BadParameter(str(exc), param_hint="--columns") from exc
    if chosen != names:
        index = [names.index(c) for c in chosen]
        names, rows = chosen, [tuple(row[i] for i in index) for row in rows]
    if fmt == "csv":  # color=True: click would strip what looks like an ANSI sequence from a value
        click.echo(table.to_csv(names, rows), nl=False, color=True)
    elif fmt == "json":
        click.echo(table.to_json(names, rows), color=True)
    elif not rows:
        click.echo("(no rows)", err=True)
    else:
        width = table.terminal_width()
        lines, left_out = table.render_table(names, rows, width=width, chosen=names if requested else None,
                                             fit=requested != ("all",))
        click.echo("\n".join(lines))
        if left_out and hidden_note:
            note = f"({len(left_out)} more column(s): {', '.join(left_out)}; see --columns)"
            click.echo(table.shorten(note, width, "note"), err=True)


class BarProgress:
    """:class:`archive.progress.Progress` shown as a tqdm bar on stderr: only when stderr is a
    terminal (a log file, such as N.I.N.A.'s, gets no bars) and not quiet."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr is not None and sys.stderr.isatty()
        self._bar = None

    def start(self, total: int, description: str) -> None:  # noqa: D102
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=description, unit="file", disable=not self.enabled or total == 0,
                         leave=False, dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:  # noqa: D102
        if self._bar is not None:
            self._bar.update(steps)

    def finish(self) -> None:  # noqa: D102
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    """``k=v`` pairs from ``--param`` into a dict (values stay strings)."""
    params = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--param")
        params[key.strip()] = value
    return params
