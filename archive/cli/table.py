"""The one formatter of every listing command: tables for people, CSV and JSON for programs.

A table for people fits the terminal: columns are chosen by importance until the width
(``shutil.get_terminal_size``; :data:`DEFAULT_WIDTH` when the output is not a terminal and
``COLUMNS`` is unset) is used, long paths and reasons are shortened in the middle or at the
end, and ``--columns`` chooses others. Values are rounded to their meaning, with the unit in
the heading (:data:`COLUMNS`): exposure in s to the ms, temperatures in deg C to 0.1, RA/Dec
in degrees to 1e-5 (0.04 arcsec), durations in h and min; NULL is blank, integer columns are
integers, and control characters in values (an OBJECT with an escape sequence) are shown
escaped, never raw.

CSV and JSON keep every value as stored: full precision, control characters unchanged, NULL
as an empty field (CSV) or ``null`` (JSON).

Only the standard library is imported here (the CLI starts fast); a pandas DataFrame is
accepted as well as ``(columns, rows)``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import shutil
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Width of a table when the output is not a terminal and ``COLUMNS`` is not set.
DEFAULT_WIDTH = 120
#: Blanks between two columns.
GAP = 2
ELLIPSIS = "…"
#: Cells an important path or note gets before less important columns are added.
COMFORT = 80


@dataclass(frozen=True)
class Column:
    """How a column is shown to people.

    Attributes
    ----------
    heading : str
        The heading, with the unit in brackets.
    kind : str
        ``int``, ``real`` (``decimals`` after the point, trailing zeros dropped), ``duration``
        (a time span shown in h and min; the value times ``seconds`` is in s), ``time``
        (to the second), ``date``, ``bool`` (yes/no), ``text``, ``path`` (shortened in the
        middle, the file name kept) or ``note`` (shortened at the end).
    rank : float
        Importance: the columns that fit the terminal are taken by rank (1 first), then in table
        order.
    decimals : int
        For ``real``.
    seconds : float
        For ``duration``: seconds per unit of the stored value (3600 for ``*_h``).
    min_width : int
        For ``path`` and ``note``: the narrowest they are shortened to.
    """

    heading: str
    kind: str = "text"
    rank: float = 3
    decimals: int = 3
    seconds: float = 1.0
    min_width: int = 0


def _c(heading: str, kind: str = "text", rank: float = 3, **kw: Any) -> Column:
    return Column(heading, kind, rank, **kw)


#: The columns the catalogue's tables use, by their name in CSV and JSON.
COLUMNS: dict[str, Column] = {
    # identity
    "id": _c("id", "int", 1), "frame_id": _c("frame", "int", 1), "master_id": _c("master", "int", 1),
    "reduction_id": _c("reduction", "int"), "run_id": _c("run", "int"), "duplicate_of_id": _c("duplicate of", "int"),
    "light_id": _c("light", "int"),
    # when
    "night": _c("night", "date", 2), "date_obs": _c("date_obs [UTC]", "time", 1),
    "first_night": _c("first night", "date", 2), "last_night": _c("last night", "date", 2),
    "created_at": _c("created [UTC]", "time", 2), "decided_at": _c("decided [UTC]", "time", 2),
    "started_at": _c("started [UTC]", "time", 2), "finished_at": _c("finished [UTC]", "time", 2),
    "valid_from": _c("valid from [UTC]", "time", 2), "valid_until": _c("valid until [UTC]", "time", 2),
    # what
    "image_type": _c("type", "text", 1), "kind": _c("kind", "text", 1), "step": _c("step", "text", 1),
    "target": _c("target", "text", 1), "filter_name": _c("filter", "text", 1), "filter": _c("filter", "text", 1),
    "name": _c("name", "text", 1), "instrument": _c("instrument", "text", 1.5), "telescope": _c("telescope", "text"),
    "method": _c("method", "text", 1), "severity": _c("severity", "text", 1), "origin": _c("origin", "text", 2),
    "readout_mode": _c("readout", "text"), "bayer_pattern": _c("bayer", "text"), "rule_version": _c("rules", "text"),
    "combine_method": _c("combine", "text"),
    # measured
    "exposure_time_s": _c("exp [s]", "real", 1, decimals=3),
    "ccd_temp_c": _c("ccd [deg C]", "real", 2, decimals=1), "set_temp_c": _c("set [deg C]", "real", 2, decimals=1),
    "gain": _c("gain", "real", decimals=3), "offset": _c("offset", "real", decimals=3),
    "ra_deg": _c("RA [deg]", "real", 2, decimals=5), "dec_deg": _c("Dec [deg]", "real", 2, decimals=5),
    "binning_x": _c("bin x", "int", 2), "binning_y": _c("bin y", "int", 2),
    "naxis1": _c("naxis1", "int"), "naxis2": _c("naxis2", "int"), "naxis3": _c("naxis3", "int"),
    "scale": _c("scale", "real", 2, decimals=4),
    # counts and totals
    "frames": _c("frames", "int", 1), "files": _c("files", "int", 1), "lights": _c("lights", "int", 1),
    "copies": _c("copies", "int", 2), "duplicates": _c("duplicates", "int", 2), "nights": _c("nights", "int", 1),
    "n_combined": _c("combined", "int", 2), "is_bad": _c("bad", "bool", 1), "bias_subtracted": _c("bias sub", "bool"),
    "resolved": _c("resolved", "bool", 2),
    "exposure_h": _c("exposure", "duration", 1, seconds=3600.0),
    "total_h": _c("total", "duration", 1, seconds=3600.0), "usable_h": _c("usable", "duration", 1, seconds=3600.0),
    "goal_h": _c("goal", "duration", 1, seconds=3600.0), "gap_h": _c("gap", "duration", 1, seconds=3600.0),
    # long text
    "path": _c("path", "path", 1, min_width=40), "folder": _c("folder", "path", 2, min_width=20),
    "reason": _c("reason", "note", 1, min_width=24), "reasons": _c("reasons", "note", 1, min_width=24),
    "why": _c("why", "note", 1, min_width=24), "bad_reason": _c("bad reason", "note", 2, min_width=12),
    "frame_ids": _c("frame ids", "note", 3, min_width=12), "weights": _c("weights", "note", 3, min_width=12),
}


class ColumnError(ValueError):
    """``--columns`` named a column the table does not have."""


# -- values ----------------------------------------------------------------------------------

_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``, ``\\u202e``).

    Escaped: C0 and C1 controls and DEL (Unicode category Cc), line and paragraph separators,
    and the bidirectional overrides that reorder what a terminal shows.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp") or code in _BIDI:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(ch)
    return "".join(out)


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide East Asian characters 2, combining marks 0."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NaTType", "NAType")


def _plain(value: Any) -> Any:
    """A Python value for numpy and pandas scalars (``item()``), NULL as None."""
    if _is_null(value):
        return None
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def format_duration(seconds: float) -> str:
    """A time span for people: ``'45 s'``, ``'16.5 min'``, ``'2 h 05 min'``."""
    sign, t = ("-" if seconds < 0 else ""), abs(seconds)
    if t < 60:
        return f"{sign}{_trim(f'{t:.1f}')} s"
    if t < 3600:
        return f"{sign}{_trim(f'{t / 60:.1f}')} min"
    hours, minutes = divmod(round(t / 60), 60)
    return f"{sign}{hours} h {minutes:02d} min"


def format_value(value: Any, column: Column) -> str:
    """One value as shown in a table (see :data:`COLUMNS`); NULL is blank."""
    value = _plain(value)
    if value is None:
        return ""
    kind = column.kind
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, Decimal)) and kind in ("int", "real", "duration", "text"):
        number = float(value)
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if kind == "duration":
            return format_duration(number * column.seconds)
        if kind == "int" or (kind == "text" and isinstance(value, int)):
            return str(int(value)) if number.is_integer() else _trim(f"{number:.6g}")
        if kind == "real":
            return _trim(f"{number:.{column.decimals}f}")
        return _trim(f"{number:.6g}")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if kind == "time" and isinstance(value, str) and len(value) > 19 and value[10] in " T" and value[19] == ".":
        return escape_controls(value[:19].replace("T", " "))  # SQLite gives timestamps as text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, default=str, ensure_ascii=False)
    return escape_controls(str(value))


# -- the table -------------------------------------------------------------------------------


def as_rows(data: Any) -> tuple[list[str], list[tuple]]:
    """``(columns, rows)`` of a pandas DataFrame or of ``(columns, rows)``."""
    if hasattr(data, "columns") and hasattr(data, "itertuples"):  # a DataFrame; pandas not imported here
        names = [str(c) for c in data.columns]
        rows = [tuple(_plain(v) for v in row) for row in data.itertuples(index=False, name=None)]
        # pandas stores an integer column with a NULL as floats: integers again for known ones
        ints = [i for i, n in enumerate(names) if n in COLUMNS and COLUMNS[n].kind == "int"]
        if ints:
            rows = [tuple(int(v) if i in ints and isinstance(v, float) and v.is_integer() else v
                          for i, v in enumerate(row)) for row in rows]
        return names, rows
    names, rows = data
    return list(names), [tuple(_plain(v) for v in row) for row in rows]


def _spec(name: str, values: Sequence[Any]) -> Column:
    """The column's entry in :data:`COLUMNS`, else one inferred from its values."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name.endswith("_h"):  # named reports: hours, shown as a duration
        return Column(f"{name[:-2]} time", "duration", seconds=3600.0)
    if name.endswith("_s"):
        return Column(f"{name[:-2]} [s]", "real", decimals=3)
    if name.endswith(("_utc", "_at")):
        return Column(f"{name.removesuffix('_utc')} [UTC]", "time")
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in present):
        if all(float(v).is_integer() for v in present) and not any(isinstance(v, float) for v in present):
            return Column(name, "int")
        return Column(name, "real", decimals=4)
    return Column(name, "text")


def choose_columns(names: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """The columns ``--columns`` asks for, in its order (``all``: every column).

    Raises
    ------
    ColumnError
        A requested column the table does not have.
    """
    if not requested:
        return list(names)
    if list(requested) == ["all"]:
        return list(names)
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise ColumnError(f"no column(s) {', '.join(unknown)}; this table has {', '.join(names)}")
    return list(dict.fromkeys(requested))


def shorten(text: str, width: int, kind: str) -> str:
    """``text`` in at most ``width`` cells: a ``path`` keeps its end (the file name), anything
    else its start; the cut is marked with an ellipsis."""
    if display_width(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if kind == "path":  # keep the end: the file name
        tail = text
        while display_width(tail) > width - 1:
            tail = tail[1:]
        return ELLIPSIS + tail
    head = text
    while display_width(head) > width - 1:
        head = head[:-1]
    return head + ELLIPSIS


def _align_reals(cells: list[str]) -> list[str]:
    """Right-aligned numbers with their decimal points one above the other."""
    fractions = [len(c) - c.index(".") if "." in c else 0 for c in cells]
    most = max(fractions, default=0)
    return [c + " " * (most - f) if c else c for c, f in zip(cells, fractions)]


def render_table(names: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int,
                 chosen: Sequence[str] | None = None, fit: bool = True) -> tuple[list[str], list[str]]:
    """Lines of a table for people, and the columns left out to fit ``width``.

    Parameters
    ----------
    names, rows
        The table.
    width : int
        Terminal cells per line.
    chosen : sequence of str, optional
        Show these columns, in this order; default the most important ones that fit, in table
        order (:attr:`Column.rank`).
    fit : bool
        Shorten paths and notes to fit ``width`` (False: every value whole).
    """
    index = {n: i for i, n in enumerate(names)}
    specs = {n: _spec(n, [r[index[n]] for r in rows]) for n in names}
    cells: dict[str, list[str]] = {}
    for n in (chosen or names):
        cells[n] = [format_value(r[index[n]], specs[n]) for r in rows]
        if specs[n].kind == "real":
            cells[n] = _align_reals(cells[n])
    natural = {n: max([display_width(specs[n].heading), *map(display_width, cells[n])]) for n in cells}
    shrinkable = {n for n in cells if specs[n].kind in ("path", "note")} if fit else set()
    least = {n: min(natural[n], max(specs[n].min_width, display_width(specs[n].heading))) if n in shrinkable
             else natural[n] for n in cells}
    if chosen:
        shown = list(chosen)
    else:  # by importance, each while it fits; a path or note may take what is left (>= 16 cells)
        shown, used, widened = [], -GAP, False
        empty = {n for n in names if not any(cells[n])}  # all NULL: named in the note only
        for n in sorted(set(names) - empty, key=lambda n: (specs[n].rank, index[n])):
            if specs[n].rank >= 2 and not widened:  # the important paths and notes whole first (to 80)
                for m in [m for m in shown if m in shrinkable]:
                    grow = max(0, min(min(natural[m], COMFORT) - least[m], width - used))
                    least[m] += grow
                    used += grow
                widened = True
            room = width - used - GAP
            if not shown or least[n] <= room:
                shown.append(n)
            elif n in shrinkable and room >= 16:
                shown.append(n)
                least[n] = room
            else:
                continue
            used += GAP + least[n]
        shown.sort(key=index.__getitem__)
    widths = {n: least[n] for n in shown}
    _widen(shown, widths, natural, shrinkable, width)
    if not fit:
        widths = {n: natural[n] for n in shown}

    def line(values: list[tuple[str, str]]) -> str:
        parts = []
        for n, text in values:
            text = shorten(text, widths[n], specs[n].kind)
            pad = " " * (widths[n] - display_width(text))
            parts.append(pad + text if specs[n].kind in ("int", "real", "duration") else text + pad)
        return (" " * GAP).join(parts).rstrip()

    lines = [line([(n, specs[n].heading) for n in shown])]
    lines += [line([(n, cells[n][i]) for n in shown]) for i in range(len(rows))]
    return lines, [n for n in names if n not in shown]


def _widen(shown: list[str], widths: dict[str, int], natural: dict[str, int], shrinkable: set[str], width: int) -> None:
    """Give the spare width to the shortened columns, in order, up to their whole values."""
    spare = width - sum(widths.values()) - GAP * (len(shown) - 1)
    for n in [n for n in shown if n in shrinkable]:
        grow = max(0, min(natural[n] - widths[n], spare))
        widths[n] += grow
        spare -= grow


def terminal_width() -> int:
    """Cells per line of the terminal (``COLUMNS``, the terminal, else :data:`DEFAULT_WIDTH`)."""
    return max(20, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


# -- CSV and JSON: values as stored ----------------------------------------------------------


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return value


def to_csv(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV with a heading line; values as stored (full precision, no character removed)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return out.getvalue()


def _json_value(value: Any) -> Any:
    """JSON for what the json module does not know: dates as ISO 8601, decimals as numbers."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def to_json(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A JSON array of records; values as stored (floats at full precision, NULL as null)."""
    records = [dict(zip(names, row)) for row in rows]
    return json.dumps(records, indent=2, default=_json_value, ensure_ascii=False)
