"""Reusable click options and output helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

FORMATS = ("table", "csv", "json")


def output_format(func: Callable) -> Callable:
    """``--format table|csv|json`` (default table)."""
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Output as an aligned table, CSV or JSON (records).",
    )(func)


def emit(frame, fmt: str) -> None:
    """Print a pandas DataFrame in the chosen format; an empty table says so on stderr."""
    import pandas as pd

    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        click.echo(json.dumps(records, indent=2, default=_json_value))
    elif frame.empty:
        click.echo("(no rows)", err=True)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            click.echo(frame.to_string(index=False, na_rep=""))


def _json_value(value: Any) -> Any:
    """JSON for what the json module does not know: dates as ISO 8601, numpy scalars as numbers."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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
