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

from archive.config import read_toml
from archive.db.frames import target_key
from archive.errors import ConfigError, HeaderError
from archive.ingest import timing
from archive.resources import resource_dir

_TOKENS = re.compile(r"[a-z]+")
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
    )


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
            self.specific = [
                _merge_dialect(default, read_toml(path))
                for path in sorted(self.folder.glob("*.toml"))
                if path.name != "default.toml"
            ]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{self.folder}: invalid dialect: missing or wrong {exc}") from exc

    def for_header(self, header: Mapping[str, Any]) -> Dialect:
        """The first specific dialect whose ``[[match]]`` rules accept ``header``, else the default.

        A match rule names a ``keyword`` that must be present and, optionally, a substring it
        must ``contain``.
        """
        for dialect in self.specific:
            for rule in dialect.match:
                value = _get(header, rule["keyword"])
                if value is not None and rule.get("contains", "") in str(value):
                    return dialect
        return self.default


def _get(header: Mapping[str, Any], key: str) -> Any:
    try:
        return header.get(key)
    except (KeyError, ValueError):  # astropy raises on malformed cards of that keyword
        return None


def _lookup(headers: tuple[Mapping[str, Any], ...], key: str) -> Any:
    for header in headers:
        value = _get(header, key)
        if value is not None:
            return value
    return None


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
        return float(text)
    except ValueError:
        from astropy.coordinates import Angle  # imported on first use: a slow import

        return float(Angle(text, unit=unit).deg)


def _binning(value: Any, axis: int) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    parts = re.split(r"[\sx*,]+", str(value).strip().lower())
    return int(float(parts[axis] if len(parts) > axis else parts[0]))


def _convert(rule: PropertyRule, keyword: Keyword, value: Any) -> Any:
    kind = rule.type
    if kind == "str":
        text = str(value).strip()
        return text or None
    if kind == "int":
        return int(_number(value))
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
    for keyword in rule.keywords:
        value = _lookup(headers, keyword.key)
        if value is None or (isinstance(value, str) and fold(value) in rule.ignore):
            continue
        try:
            converted = _convert(rule, keyword, value)
        except (ValueError, TypeError, ArithmeticError) as exc:  # astropy's UnitsError is a ValueError
            out.warnings.append(f"{keyword.key}={value!r} is not a valid {rule.name}: {exc}")
            continue
        if converted is not None:
            out.sources[rule.name] = keyword.key
            return converted
    return None


def _words_type(dialect: Dialect, text: str | None) -> str | None:
    for token in _TOKENS.findall((text or "").lower()):
        kind = dialect.type_words.get(token) or (dialect.type_words.get(token[:-1]) if token.endswith("s") else None)
        if kind:
            return kind
    return None


def _image_type(headers, dialect: Dialect, path: PurePath | None, folders: tuple[str, ...], out: Normalized):
    kind = source = None
    for key in dialect.type_keywords:
        value = _lookup(headers, key)
        if value is None or not str(value).strip():
            continue
        kind = dialect.type_values.get(fold(str(value)))
        if kind:
            source = f"{key}={str(value).strip()!r}"
            break
        out.warnings.append(f"{key}={str(value).strip()!r} is not a known image type")
    if kind is None or kind in dialect.generic_types:
        places = [("OBJECT", out.values.get("target"))]
        if path is not None:
            places.append(("file name", path.stem))
        places += [("folder", folder) for folder in reversed(folders)]
        for place, text in places:
            refined = _words_type(dialect, text)
            if refined:
                kind, source = refined, f"word in {place} {text!r}" + (f" (over {source})" if source else "")
                break
    exposure = out.values.get("exposure_time_s")
    if kind == "dark" and dialect.zero_exposure_dark_is_bias and exposure == 0:
        kind, source = "bias", f"{source}; zero exposure: bias"
    if kind:
        out.sources["image_type"] = source
    return kind


def _date_obs(headers, dialect: Dialect, out: Normalized) -> dt.datetime | None:
    rules = dialect.time
    scale = timing.time_scale(_lookup(headers, rules.get("timescale", "")) if rules.get("timescale") else None)
    for key in rules.get("datetime", []):
        value = _lookup(headers, key)
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
            time_value = _lookup(headers, time_key)
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
        value = _lookup(headers, key)
        if value is None:
            continue
        try:
            stamp = timing.from_mjd(_number(value), scale=scale)
        except (ValueError, TypeError):
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
        the source of each, and warnings for missing expected values.
    """
    headers = (header,) if primary is None else (header, primary)
    dialect = dialects.for_header(header)
    if dialect is dialects.default and primary is not None:
        dialect = dialects.for_header(primary)
    out = Normalized(sources={"dialect": dialect.label})
    for name, rule in dialect.properties.items():
        out.values[name] = _read_property(headers, rule, out)
    out.values["image_type"] = _image_type(headers, dialect, path, folders, out)
    date_obs = _date_obs(headers, dialect, out)
    out.values["date_obs"] = date_obs
    out.values["date_obs_s"] = timing.epoch_seconds(date_obs) if date_obs else None
    longitude = out.values.pop("site_longitude_deg")
    if longitude is None and sites and out.values.get("instrument") in sites:
        longitude = sites[out.values["instrument"]]
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
