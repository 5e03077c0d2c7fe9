"""The normalization of a header by its keyword dialect: the catalogue's values, their sources
and warnings.

:func:`normalize_header` chooses the header's dialect (:mod:`archive.ingest.dialects`) and reads
each property from the first of its keywords whose value converts (units, sexagesimal angles,
binning) and passes :func:`archive.ingest.validation.check_value`; then the image type (type
keywords, refined by OBJECT and the file and folder names), the Bayer pattern, DATE-OBS, the
instrument and the observing night. No FITS keyword appears in this module.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from archive.config import InstrumentName, for_instrument
from archive.db.frames import target_key
from archive.errors import ConfigError, HeaderError
from archive.ingest import timing
from archive.ingest.dialects import (
    BayerRule,
    Dialect,
    DialectSet,
    Keyword,
    Normalized,
    PropertyRule,
    fold,
    keyword_value,
    shift_pattern,
)
from archive.ingest.validation import FRAME_INSTRUMENT_NAME, check_value

#: What separates the tokens of a file or folder name (and the words of an OBJECT phrase).
_DELIMITERS = re.compile(r"[^a-z0-9]+")
#: A name token that may carry a type word: the word, optionally followed by a number and
#: more ("dark", "Flats", "bias3", "thar5s").
_WORD_NUMBER = re.compile(r"([a-z]+)(?:\d[a-z0-9]*)?")

#: Properties every frame should have; a frame without one is ingested with a warning.
EXPECTED = ("image_type", "date_obs", "exposure_time_s", "instrument")


def _lookup(headers: tuple[Mapping[str, Any], ...], key: str, out: Normalized | None = None) -> Any:
    for header in headers:
        value = keyword_value(header, key, out)
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
    """The first keyword of ``rule`` whose value converts and passes
    :func:`~archive.ingest.validation.check_value`."""
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
    shifted by the offset keywords (:func:`~archive.ingest.dialects.shift_pattern`); the
    source names both."""
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
        :func:`~archive.ingest.validation.check_value` (its column's type, the property's
        ``range``; DATE-OBS within the dialect's ``[time] range``): one that fails is NULL, its
        warning names the keyword and the value, and the property's next keyword is tried.
        This is ingest's one validation.
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
