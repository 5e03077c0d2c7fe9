"""Keyword dialects as data, and the normalization of a header by them.

A dialect (one TOML file in ``configs/dialects``) maps each normalized property to the header
keywords that may hold it, with fallbacks, as Rubin's astro_metadata_translator does per
camera. ``default.toml`` covers the FITS standard and the common programs; a specific dialect
(MaxIm, N.I.N.A., SBIG, ESO, ...) is chosen by its ``[[match]]`` rules and its keywords are
tried before the default's. No FITS keyword appears in this module.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, String

from archive.config import InstrumentName, for_instrument, read_toml
from archive.db.frames import target_key
from archive.db.models import Frame, Instrument
from archive.errors import ConfigError, HeaderError
from archive.ingest import timing
from archive.resources import resource_dir

#: What separates the tokens of a file or folder name (and the words of an OBJECT phrase).
_DELIMITERS = re.compile(r"[^a-z0-9]+")
#: A name token that may carry a type word: the word, optionally followed by a number and
#: more ("dark", "Flats", "bias3", "thar5s").
_WORD_NUMBER = re.compile(r"([a-z]+)(?:\d[a-z0-9]*)?")
_SPACES = re.compile(r"\s+")


#: Properties every frame should have; a frame without one is ingested with a warning.
EXPECTED = ("image_type", "date_obs", "exposure_time_s", "instrument")


def fold(value: str) -> str:
    """Lower case with runs of blanks folded to one space: how type values are compared."""
    return _SPACES.sub(" ", value.strip().lower())


@dataclass(frozen=True)
class Keyword:
    """A header keyword and the unit its value is in (None: the property's own unit)."""

    key: str
    unit: str | None = None


@dataclass(frozen=True)
class PropertyRule:
    """How one normalized property is read: its type, unit, keywords and absent values."""

    name: str
    type: str
    keywords: tuple[Keyword, ...]
    unit: str | None = None
    ignore: frozenset[str] = frozenset()
    #: Physically possible values (inclusive, in ``unit``); None: only the column's own limits.
    range: tuple[float, float] | None = None


#: The four Bayer patterns, read along the first two rows of the 2x2 cell at ``data[0, 0]``.
BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


@dataclass(frozen=True)
class BayerRule:
    """How the Bayer pattern is read (``[bayer]`` of a dialect): pattern keywords in order,
    folded spelling -> pattern, values meaning "no mosaic", and the offset keywords."""

    keywords: tuple[str, ...] = ()
    values: Mapping[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    x_offset: tuple[str, ...] = ()
    y_offset: tuple[str, ...] = ()


def shift_pattern(pattern: str, x_offset: int, y_offset: int) -> str:
    """The Bayer pattern seen from a pixel ``x_offset`` columns and ``y_offset`` rows further.

    Parameters
    ----------
    pattern : str
        One of :data:`BAYER_PATTERNS` (the 2x2 cell row by row: ``pattern[0:2]`` is the first
        row).
    x_offset, y_offset : int
        Offsets in pixels (XBAYROFF, YBAYROFF); only their parity matters.

    Returns
    -------
    str
        The shifted pattern: ``shift_pattern('RGGB', 1, 0) == 'GRBG'``,
        ``shift_pattern('RGGB', 0, 1) == 'GBRG'``, ``shift_pattern('RGGB', 1, 1) == 'BGGR'``.
    """
    rows = [pattern[0:2], pattern[2:4]]
    if y_offset % 2:
        rows.reverse()
    if x_offset % 2:
        rows = [r[::-1] for r in rows]
    return "".join(rows)


@dataclass(frozen=True)
class Dialect:
    """One dialect file, merged over the default (its keywords tried first)."""

    name: str
    version: int
    match: tuple[dict[str, str], ...]
    properties: dict[str, PropertyRule]
    time: dict[str, Any]
    type_keywords: tuple[str, ...]
    type_values: dict[str, str]  # folded header value -> normalized type
    type_words: dict[str, str]  # word -> normalized type, in precedence order
    generic_types: frozenset[str]
    zero_exposure_dark_is_bias: bool
    bayer: BayerRule = BayerRule()
    #: Of two specific dialects whose rules both accept a header, the higher priority wins
    #: (then the file name): a camera's dialect over its vendor's program (seestar over asiair).
    priority: int = 0

    @property
    def label(self) -> str:
        """``name/version``, as recorded in each frame's sources."""
        return f"{self.name}/{self.version}"


@dataclass
class Normalized:
    """The normalized values of one header.

    Attributes
    ----------
    values : dict
        Column name -> value (``None`` when nothing gave one).
    sources : dict
        Column name -> the keyword or rule that produced the value, plus ``dialect``.
    warnings : list of str
        Missing expected values and unreadable keyword values, one line each.
    """

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _keywords(raw: Iterable[Any]) -> tuple[Keyword, ...]:
    return tuple(Keyword(k) if isinstance(k, str) else Keyword(k["key"], k.get("unit")) for k in raw)


def _range(prop: str, raw: Any) -> tuple[float, float] | None:
    if raw is None:
        return None
    low, high = (float(v) for v in raw)
    if not low <= high:
        raise ConfigError(f"dialect property {prop}: range {raw!r} is empty")
    return low, high


def _merge_dialect(default: dict[str, Any], specific: dict[str, Any] | None) -> Dialect:
    specific = specific or {}
    name = specific.get("name", default["name"])
    properties: dict[str, PropertyRule] = {}
    for prop, base in default.get("properties", {}).items():
        extra = specific.get("properties", {}).get(prop, {})
        keywords = list(extra.get("keywords", []))
        if not extra.get("replace"):
            keywords += [k for k in base.get("keywords", []) if k not in keywords]
        properties[prop] = PropertyRule(
            name=prop,
            type=extra.get("type", base["type"]),
            unit=extra.get("unit", base.get("unit")),
            keywords=_keywords(keywords),
            ignore=frozenset(fold(v) for v in extra.get("ignore", base.get("ignore", []))),
            range=_range(prop, extra.get("range", base.get("range"))),
        )
    base_type, extra_type = default.get("image_type", {}), specific.get("image_type", {})
    type_keywords = list(extra_type.get("keywords", []))
    type_keywords += [k for k in base_type.get("keywords", []) if k not in type_keywords]
    values: dict[str, str] = {}
    words: dict[str, str] = {}
    for source in (extra_type, base_type):  # the specific dialect's values take precedence
        for kind, names in source.get("values", {}).items():
            for v in names:
                values.setdefault(fold(v), kind)
        for kind, names in source.get("words", {}).items():
            for w in names:
                words.setdefault(w.lower(), kind)
    bayer = _bayer_rule(default.get("bayer", {}), specific.get("bayer", {}))
    time = dict(default.get("time", {}))
    for key, value in specific.get("time", {}).items():
        time[key] = value if isinstance(value, str) else list(value) + [v for v in time.get(key, []) if v not in value]
    return Dialect(
        name=name,
        version=int(specific.get("version", default.get("version", 1))),
        match=tuple(specific.get("match", ())),
        properties=properties,
        time=time,
        type_keywords=tuple(type_keywords),
        type_values=values,
        type_words=words,
        generic_types=frozenset(extra_type.get("generic", base_type.get("generic", []))),
        zero_exposure_dark_is_bias=bool(
            extra_type.get("zero_exposure_dark_is_bias", base_type.get("zero_exposure_dark_is_bias", True))
        ),
        bayer=bayer,
        priority=int(specific.get("priority", 0)),
    )


def _bayer_rule(base: Mapping[str, Any], extra: Mapping[str, Any]) -> BayerRule:
    """``[bayer]`` of the default merged with a specific dialect's (its keywords first, its
    spellings added)."""
    def keys(name: str) -> tuple[str, ...]:
        own = list(extra.get(name, []))
        return tuple(own + [k for k in base.get(name, []) if k not in own])

    values: dict[str, str] = {}
    for source in (extra, base):
        for pattern, spellings in source.get("values", {}).items():
            if pattern not in BAYER_PATTERNS:
                raise ConfigError(f"dialect [bayer.values]: {pattern!r} is not one of {BAYER_PATTERNS}")
            for spelling in spellings:
                values.setdefault(fold(spelling), pattern)
    return BayerRule(keywords=keys("keywords"), values=values,
                     ignore=frozenset(fold(v) for v in extra.get("ignore", base.get("ignore", []))),
                     x_offset=keys("x_offset"), y_offset=keys("y_offset"))


class DialectSet:
    """The dialects of a folder (default: the bundled ``configs/dialects``).

    Parameters
    ----------
    folder : Path, optional
        A folder of ``*.toml`` dialect files with a ``default.toml``.

    Raises
    ------
    ConfigError
        The folder has no ``default.toml``, or a file is invalid.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else resource_dir("configs") / "dialects"
        default_file = self.folder / "default.toml"
        if not default_file.is_file():
            raise ConfigError(f"{self.folder}: no default.toml dialect")
        default = read_toml(default_file)
        try:
            self.default = _merge_dialect(default, None)
            self.specific = sorted((
                _merge_dialect(default, read_toml(path))
                for path in sorted(self.folder.glob("*.toml"))
                if path.name != "default.toml"
            ), key=lambda d: -d.priority)  # stable: equal priorities in file-name order
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{self.folder}: invalid dialect: missing or wrong {exc}") from exc

    def for_header(self, header: Mapping[str, Any]) -> Dialect:
        """The specific dialect of highest ``priority`` (then first by file name) whose
        ``[[match]]`` rules accept ``header``, else the default.

        A match rule names a ``keyword`` that must be present and, optionally, a substring it
        must ``contain``.
        """
        for dialect in self.specific:
            for rule in dialect.match:
                value = _get(header, rule["keyword"])
                if value is not None and rule.get("contains", "") in str(value):
                    return dialect
        return self.default


def _get(header: Mapping[str, Any], key: str, out: Normalized | None = None) -> Any:
    try:
        return header.get(key)
    except (KeyError, ValueError) as exc:  # a malformed card of that keyword (CardIndex, astropy)
        if out is not None:
            out.warnings.append(f"{key}: {exc}; ignored")
        return None


def _lookup(headers: tuple[Mapping[str, Any], ...], key: str, out: Normalized | None = None) -> Any:
    for header in headers:
        value = _get(header, key, out)
        if value is not None:
            return value
    return None


# -- the catalogue's columns: what a value must be to be stored, the same on every backend ---------

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
    limit = limits.get(column, ColumnLimits("other"))
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


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    number = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _angle(value: Any, unit: str) -> float:
    """Degrees from a number (already degrees) or a sexagesimal string in ``unit``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value)
    text = str(value).strip()
    try:
        return _number(text)
    except ValueError as exc:
        if "finite" in str(exc):
            raise
        from astropy.coordinates import Angle  # imported on first use: a slow import

        return _number(Angle(text, unit=unit).deg)


def _whole(number: float) -> int:
    if not number.is_integer():
        raise ValueError(f"{number:g} is not a whole number")
    return int(number)


def _binning(value: Any, axis: int) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _whole(_number(value))
    parts = re.split(r"[\sx*,]+", str(value).strip().lower())
    return _whole(_number(parts[axis] if len(parts) > axis else parts[0]))


def _convert(rule: PropertyRule, keyword: Keyword, value: Any) -> Any:
    kind = rule.type
    if kind == "str":
        text = str(value).strip()
        return text or None
    if kind == "int":
        return _whole(_number(value))
    if kind == "float":
        number = _number(value)
        if keyword.unit and rule.unit and keyword.unit != rule.unit:
            import astropy.units as u  # imported on first use: a slow import

            number = (number * u.Unit(keyword.unit)).to_value(u.Unit(rule.unit), equivalencies=u.temperature())
        return number
    if kind in ("binning_x", "binning_y"):
        return _binning(value, 0 if kind == "binning_x" else 1)
    if kind == "ra":
        return _angle(value, "hourangle")
    if kind in ("dec", "longitude"):
        return _angle(value, "deg")
    raise ConfigError(f"dialect property {rule.name}: unknown type {kind!r}")


def _read_property(headers, rule: PropertyRule, out: Normalized) -> Any:
    """The first keyword of ``rule`` whose value converts and passes :func:`check_value`."""
    for keyword in rule.keywords:
        value = _lookup(headers, keyword.key, out)
        if value is None or (isinstance(value, str) and fold(value) in rule.ignore):
            continue
        try:
            converted = _convert(rule, keyword, value)
        except (ValueError, TypeError, ArithmeticError) as exc:  # astropy's UnitsError is a ValueError
            out.warnings.append(f"{keyword.key}={value!r} is not a valid {rule.name}: {exc}")
            continue
        converted, problem = check_value(rule.name, converted, source=f"{keyword.key}={value!r}", possible=rule.range)
        if problem:
            out.warnings.append(problem)
        if converted is not None:
            out.sources[rule.name] = keyword.key
            return converted
    return None


def _word_type(dialect: Dialect, token: str) -> str | None:
    """The type a name token names: a type word, its plural, or either followed by a number."""
    match = _WORD_NUMBER.fullmatch(token)
    if not match:
        return None
    word = match.group(1)
    return dialect.type_words.get(word) or (dialect.type_words.get(word[:-1]) if word.endswith("s") else None)


def _phrase_type(dialect: Dialect, text: str) -> str | None:
    """The type of an OBJECT that is, as a whole, a calibration phrase ('Flat field', 'DARK',
    'bias_003'); None for one that merely contains such a word ('Dark Shark Nebula')."""
    words = [w for w in _DELIMITERS.split(text.lower()) if w]
    while words and words[-1].isdigit():  # a frame number: 'flat 001'
        words.pop()
    if not words:
        return None
    return dialect.type_values.get(" ".join(words)) or (_word_type(dialect, words[0]) if len(words) == 1 else None)


#: :func:`_name_type`'s answer for a name that says the type is the generic one ('Light').
_CONTRARY = ("", "")


def _name_type(dialect: Dialect, text: str, target: str | None) -> tuple[str, str] | None:
    """(type, token) from a delimited token of a file or folder name, or None.

    A token counts when it is a type word (:func:`_word_type`) and is not a word of the target's
    name (files are often named after OBJECT: 'Dark Shark_Ha_001'). A name with a token naming
    a generic type ('M31_Light_zero_001', a folder 'Light') gives :data:`_CONTRARY`: the search
    stops there.
    """
    tokens = [t for t in _DELIMITERS.split(text.lower()) if t]
    generic = {g for g in dialect.generic_types} | {g + "s" for g in dialect.generic_types}
    if any(t in generic for t in tokens):
        return _CONTRARY
    target_words = set(_DELIMITERS.split(target.lower())) if target else set()
    for token in tokens:
        kind = _word_type(dialect, token)
        if kind and token not in target_words:
            return kind, token
    return None


def _image_type(headers, dialect: Dialect, path: PurePath | None, folders: tuple[str, ...], out: Normalized):
    """The image type: the first type keyword with a known value; a generic (or absent) type is
    refined only on strong evidence, recorded in ``sources``: an OBJECT that is a calibration
    phrase as a whole, else a delimited token of the file name, else of the folder names (the
    deepest first), by :func:`_name_type`."""
    kind = source = None
    for key in dialect.type_keywords:
        value = _lookup(headers, key, out)
        if value is None or not str(value).strip():
            continue
        kind = dialect.type_values.get(fold(str(value)))
        if kind:
            source = f"{key}={str(value).strip()!r}"
            break
        out.warnings.append(f"{key}={str(value).strip()!r} is not a known image type")
    if kind is None or kind in dialect.generic_types:
        over = f" (over {source})" if source else ""
        target = out.values.get("target")
        refined = _phrase_type(dialect, target) if target else None
        if refined and refined not in dialect.generic_types and refined != kind:
            kind, source = refined, f"OBJECT {target!r} is a calibration phrase{over}"
        else:
            places = [("file name", path.stem)] if path is not None else []
            places += [("folder", folder) for folder in reversed(folders)]
            for place, text in places:
                found = _name_type(dialect, text, target)
                if found is _CONTRARY:
                    break
                if found and found[0] != kind:
                    kind, source = found[0], f"word {found[1]!r} in {place} {text!r}{over}"
                    break
    exposure = out.values.get("exposure_time_s")
    if kind == "dark" and dialect.zero_exposure_dark_is_bias and exposure == 0:
        kind, source = "bias", f"{source}; zero exposure: bias"
    if kind:
        out.sources["image_type"] = source
    return kind


def _bayer_pattern(headers, rule: BayerRule, out: Normalized) -> str | None:
    """The Bayer pattern at ``data[0, 0]``: the first pattern keyword with a known spelling,
    shifted by the offset keywords (:func:`shift_pattern`); the source names both."""
    for key in rule.keywords:
        value = _lookup(headers, key, out)
        if value is None or isinstance(value, bool) or fold(str(value)) in rule.ignore:
            continue
        pattern = rule.values.get(fold(str(value)))
        if pattern is None:
            out.warnings.append(f"{key}={value!r} is not a known Bayer pattern")
            continue
        source = f"{key}={str(value).strip()!r}"
        offsets = []
        for axis, names in (("x", rule.x_offset), ("y", rule.y_offset)):
            offset = 0
            for name in names:
                raw = _lookup(headers, name, out)
                if raw is None:
                    continue
                try:
                    offset = _whole(_number(raw))
                except (ValueError, TypeError) as exc:
                    out.warnings.append(f"{name}={raw!r} is not a Bayer offset: {exc}; taken as 0")
                    continue
                if offset:
                    source += f" shifted by {name}={offset}"
                break
            offsets.append(offset)
        out.sources["bayer_pattern"] = source
        return shift_pattern(pattern, *offsets)
    return None


def _date_obs(headers, dialect: Dialect, out: Normalized) -> dt.datetime | None:
    rules = dialect.time
    scale = timing.time_scale(_lookup(headers, rules.get("timescale", ""), out) if rules.get("timescale") else None)
    for key in rules.get("datetime", []):
        value = _lookup(headers, key, out)
        if value is None or not str(value).strip():
            continue
        try:
            stamp, has_time = timing.parse_datetime(str(value), scale=scale)
        except HeaderError as exc:
            out.warnings.append(f"{key}: {exc}")
            continue
        if has_time:
            out.sources["date_obs"] = key
            return stamp
        for time_key in rules.get("time_of_day", []):
            time_value = _lookup(headers, time_key, out)
            if time_value is None:
                continue
            try:
                clock = dt.time.fromisoformat(str(time_value).strip())
            except ValueError:
                out.warnings.append(f"{time_key}={time_value!r} is not a time of day")
                continue
            out.sources["date_obs"] = f"{key} + {time_key}"
            return dt.datetime.combine(stamp.date(), clock)
        mjd = _mjd(headers, rules, scale, out)
        if mjd is not None and mjd.date() == stamp.date():
            return mjd
        out.sources["date_obs"] = f"{key} (date only, time unknown)"
        out.warnings.append(f"{key}={value!r} has no time of day and no time keyword; midnight assumed")
        return stamp
    return _mjd(headers, rules, scale, out)


def _mjd(headers, rules, scale: str, out: Normalized) -> dt.datetime | None:
    for key in rules.get("mjd", []):
        value = _lookup(headers, key, out)
        if value is None:
            continue
        try:
            stamp = timing.from_mjd(_number(value), scale=scale)
        except (ValueError, TypeError, ArithmeticError):
            out.warnings.append(f"{key}={value!r} is not an MJD")
            continue
        out.sources["date_obs"] = key
        return stamp
    return None


def normalize_header(
    header: Mapping[str, Any],
    dialects: DialectSet,
    *,
    primary: Mapping[str, Any] | None = None,
    path: PurePath | None = None,
    folders: tuple[str, ...] = (),
    sites: Mapping[str, float] | None = None,
) -> Normalized:
    """Normalize one image header by its dialect.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        The header of the HDU holding the image.
    dialects : DialectSet
        The dialects to choose from (chosen by ``header``, then ``primary``).
    primary : mapping, optional
        The primary header of a multi-extension file; keywords missing from ``header`` are
        looked up there (inheritance).
    path : PurePath, optional
        The file, whose name may give the image type.
    folders : tuple of str
        Folder names from the ingested root down to the file, which may give the image type.
    sites : mapping, optional
        Instrument name -> site longitude (deg, east positive) for headers with no site keyword.

    Returns
    -------
    Normalized
        Values for the catalogue columns (exposure time in s, temperatures in deg C, RA/Dec in
        deg, ``date_obs`` naive UTC, ``night`` by :func:`archive.ingest.timing.observing_night`),
        the source of each, and warnings for missing expected values. Every value has passed
        :func:`check_value` (its column's type, the property's ``range``; DATE-OBS within the
        dialect's ``[time] range``): one that fails is NULL, its warning names the keyword and
        the value, and the property's next keyword is tried. This is ingest's one validation.
    """
    headers = (header,) if primary is None else (header, primary)
    dialect = dialects.for_header(header)
    if dialect is dialects.default and primary is not None:
        dialect = dialects.for_header(primary)
    out = Normalized(sources={"dialect": dialect.label})
    for name, rule in dialect.properties.items():
        out.values[name] = _read_property(headers, rule, out)
    out.values["image_type"] = _image_type(headers, dialect, path, folders, out)
    out.values["bayer_pattern"] = _bayer_pattern(headers, dialect.bayer, out)
    date_obs = _date_obs(headers, dialect, out)
    earliest, latest = (dt.datetime.fromisoformat(v) for v in dialect.time.get("range", ("0001-01-02", "9999-12-30")))
    if date_obs is not None and not earliest <= date_obs <= latest:
        out.warnings.append(f"{out.sources.pop('date_obs')} ignored: date_obs {date_obs.isoformat()} is outside "
                            f"{earliest.date()}..{latest.date()}")
        date_obs = None
    out.values["date_obs"] = date_obs
    out.values["date_obs_s"] = timing.epoch_seconds(date_obs) if date_obs else None
    model, serial = out.values.get("instrument"), out.values.pop("serial", None)
    out.values["instrument_model"] = model
    out.values["instrument_serial"] = serial if model else None
    if model and serial:  # one unit of the model: its own instrument
        out.values["instrument"] = f"{model} {serial}"[:FRAME_INSTRUMENT_NAME]
        out.sources["instrument_serial"] = out.sources.pop("serial")
    longitude = out.values.pop("site_longitude_deg")
    site = for_instrument(sites or {}, InstrumentName(out.values["instrument"], model)) if model else None
    if longitude is None and site is not None:
        longitude = site
        out.sources["site_longitude_deg"] = "configured site of the instrument"
    if date_obs is not None:
        out.values["night"] = timing.observing_night(date_obs, longitude)
        out.sources["night"] = (
            f"local date at longitude {longitude:+.3f} deg ({out.sources['site_longitude_deg']}) minus 12 h"
            if longitude is not None else "UTC date minus 12 h (no site longitude)"
        )
    else:
        out.values["night"] = None
    out.values["target_key"] = target_key(out.values.get("target"))
    for name in EXPECTED:
        if out.values.get(name) is None:
            out.warnings.append(f"no {name.replace('_', ' ')}: none of its keywords or rules gave a value")
    return out
