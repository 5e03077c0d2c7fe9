"""The validation of ingest: what a value must be to be stored in the catalogue's columns, the
same on every backend.

:func:`check_value` checks a normalized value against its column's type in
:mod:`archive.db.models` and the physically possible range (a dialect property's ``range``):
the normalization of headers (:mod:`archive.ingest.normalize`) and the writing of frames
(:mod:`archive.ingest.catalogue`) both go through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, String

from archive.db.models import Frame, Instrument

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ColumnLimits:
    """What a column of the catalogue can hold, read from its type in :mod:`archive.db.models`.

    ``kind`` is ``int`` (whole numbers within ``low``..``high``: 32-bit ``Integer``, 64-bit
    ``BigInteger``), ``float`` (finite: neither backend stores NaN or infinity alike), ``str``
    (at most ``length`` characters) or ``other``.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    length: int | None = None


def _column_limits(table) -> dict[str, ColumnLimits]:
    limits = {}
    for column in table.columns:
        kind = column.type
        if isinstance(kind, BigInteger):
            limits[column.name] = ColumnLimits("int", *_INT64)
        elif isinstance(kind, Integer):
            limits[column.name] = ColumnLimits("int", *_INT32)
        elif isinstance(kind, Float):
            limits[column.name] = ColumnLimits("float")
        elif isinstance(kind, String) and kind.length:
            limits[column.name] = ColumnLimits("str", length=kind.length)
        else:
            limits[column.name] = ColumnLimits("other")
    return limits


#: The limits of a name that is no column: only range-checked.
_NO_COLUMN = ColumnLimits("other")
#: Frame column -> its limits.
FRAME_COLUMNS: dict[str, ColumnLimits] = _column_limits(Frame.__table__)
#: Longest instrument name (``instruments.name``): a model and a serial together are cut to it.
FRAME_INSTRUMENT_NAME: int = Instrument.__table__.c.name.type.length


def check_value(column: str, value: Any, *, source: str, possible: tuple[float, float] | None = None,
                limits: Mapping[str, ColumnLimits] = FRAME_COLUMNS) -> tuple[Any, str | None]:
    """Check one value against its column's type and the physically possible range.

    This is the one validation of ingest: a value that passes is stored unchanged on SQLite and
    on PostgreSQL alike; one that does not is not stored.

    Parameters
    ----------
    column : str
        The catalogue column (a key of ``limits``; other names are only range-checked).
    value : object
        The normalized value (None passes).
    source : str
        What gave the value, for the message: ``KEYWORD=raw value``.
    possible : (float, float), optional
        Inclusive physical range (a dialect property's ``range``), in the column's unit.
    limits : mapping, optional
        Column name -> :class:`ColumnLimits` (default the frames table).

    Returns
    -------
    (value, warning)
        The value to store (None when it cannot be stored; a string cut to the column's length)
        and a warning naming the source and the value, or None when the value passed whole.
    """
    if value is None:
        return None, None
    limit = limits.get(column, _NO_COLUMN)
    if limit.kind == "str" and isinstance(value, str):
        if len(value) > limit.length:
            return value[: limit.length], f"{source}: {column} longer than {limit.length} characters: cut"
        return value, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return None, f"{source} ignored: {column}={value} is not a finite number"
        if limit.kind == "int" and not float(value).is_integer():
            return None, f"{source} ignored: {column}={value} is not a whole number"
        low, high = possible if possible is not None else (limit.low, limit.high)
        if limit.kind == "int":
            low = limit.low if low is None else max(low, limit.low)
            high = limit.high if high is None else min(high, limit.high)
        if (low is not None and value < low) or (high is not None and value > high):
            return None, f"{source} ignored: {column}={value:g} is out of range {low:g}..{high:g}" \
                if isinstance(value, float) else f"{source} ignored: {column}={value} is out of range {low:g}..{high:g}"
        return (int(value) if limit.kind == "int" else value), None
    return value, None
