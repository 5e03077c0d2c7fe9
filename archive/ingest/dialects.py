"""Keyword dialects as data: the rules, read from their files, and the choice of one per header.

A dialect (one TOML file in ``configs/dialects``) maps each normalized property to the header
keywords that may hold it, with fallbacks, as Rubin's astro_metadata_translator does per
camera. ``default.toml`` covers the FITS standard and the common programs; a specific dialect
(MaxIm, N.I.N.A., SBIG, ESO, ...) is chosen by its ``[[match]]`` rules and its keywords are
tried before the default's. This module holds the rules' types, their loading and merging
(:class:`DialectSet`) and the result of a normalization (:class:`Normalized`); the
normalization of a header by them is :mod:`archive.ingest.normalize`. No FITS keyword appears
in this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.config import read_toml
from archive.errors import ConfigError
from archive.resources import resource_dir

_SPACES = re.compile(r"\s+")


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
                value = keyword_value(header, rule["keyword"])
                if value is not None and rule.get("contains", "") in str(value):
                    return dialect
        return self.default


def keyword_value(header: Mapping[str, Any], key: str, out: Normalized | None = None) -> Any:
    """The value of ``key`` in ``header`` (None when absent or malformed; a warning in ``out``)."""
    try:
        return header.get(key)
    except (KeyError, ValueError) as exc:  # a malformed card of that keyword (CardIndex, astropy)
        if out is not None:
            out.warnings.append(f"{key}: {exc}; ignored")
        return None
