"""Layered configuration: package defaults, user file, environment, command line.

The order, lowest first, is written once here and in ``configs/archive.toml``:

1. ``configs/archive.toml`` shipped with the package;
2. the user file ``$ARCHIVE_CONFIG``, else ``~/.config/archive/config.toml``;
3. environment variables (``ARCHIVE_DB``, ``ARCHIVE_WORKERS``, ``ARCHIVE_BATCH_SIZE``);
4. explicit overrides (command-line flags) passed to :func:`load_settings`.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from archive.errors import ConfigError
from archive.resources import resource_dir

log = logging.getLogger(__name__)

#: Sections of ``configs/reduction.toml``: in the user file, at the top level (``[night]
#: imaging_root``, as the README writes them) or below ``[reduction]`` (``[reduction.night]``).
REDUCTION_SECTIONS = ("night", "output", "calibrate", "register", "stack", "executor")
#: Tables whose keys are the user's own names (instrument -> site longitude).
_FREE_TABLES = {("sites",), ("quality", "instruments")}  # names the user chooses
#: Keys read by modules that ship no defaults file: ``[masters] rules`` and ``library``.
_EXTRA_KEYS = {("masters",): {"rules", "library"}}

ENVIRONMENT = {
    "ARCHIVE_DB": ("database", "url"),
    "ARCHIVE_WORKERS": ("ingest", "workers"),
    "ARCHIVE_BATCH_SIZE": ("ingest", "batch_size"),
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into :class:`ConfigError` naming the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


class InstrumentName(str):
    """An instrument's name (``instruments.name``: the model, or ``"model serial"`` for one
    unit) that also carries its ``model``, so that configuration written for a model (``[instruments.
    "Seestar S50"]``) applies to each of its units: see :func:`for_instrument`.

    Parameters
    ----------
    name : str
        The instrument's name.
    model : str, optional
        Its model (INSTRUME); default: the name.
    """

    model: str

    def __new__(cls, name: str, model: str | None = None) -> Self:
        out = super().__new__(cls, name)
        out.model = model or name
        return out


def for_instrument(table: dict[str, Any], name: str | None, default: Any = None) -> Any:
    """The entry of ``table`` (instrument -> settings) for the instrument ``name``: its own
    name first, then its model (an :class:`InstrumentName`'s ``model``), else ``default``.

    The one look-up of per-instrument configuration (matching, quality, detector sections,
    sites), so that a unit is configured by its model unless it is named itself.
    """
    if not name:
        return default
    if name in table:
        return table[name]
    model = getattr(name, "model", None)
    return table.get(model, default) if model else default


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``extra`` (tables merge, other values replace)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_layers(
    merged: dict[str, Any],
    environment: dict[str, tuple[str, str]],
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Apply the two upper layers: environment variables, then explicit overrides (flags).

    Parameters
    ----------
    merged : dict
        The lower layers, already merged.
    environment : dict
        Variable name -> (section, key) it sets, when set and not empty.
    overrides : dict, optional
        Section -> key -> value; ``None`` values (flags not given) are ignored.
    """
    for variable, (section, key) in environment.items():
        if os.environ.get(variable):
            merged = merge(merged, {section: {key: os.environ[variable]}})
    for section, values in (overrides or {}).items():
        merged = merge(merged, {section: {k: v for k, v in values.items() if v is not None}})
    return merged


def data_home() -> Path:
    """archive's data folder: ``$XDG_DATA_HOME/archive``, else ``~/.local/share/archive``."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "archive"


def default_database_path() -> Path:
    """The default SQLite catalogue: :func:`data_home` / ``catalogue.sqlite``."""
    return data_home() / "catalogue.sqlite"


def user_config_path() -> Path:
    """The user configuration file: ``$ARCHIVE_CONFIG``, else ``~/.config/archive/config.toml``."""
    explicit = os.environ.get("ARCHIVE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "archive" / "config.toml"


def known_keys() -> dict[tuple[str, ...], set[str]]:
    """Table path -> the keys the user file may set there: every key of the bundled
    ``archive.toml``, ``copyback.toml`` and ``reduction.toml`` (the latter both at the top level
    and below ``[reduction]``), of ``sky.toml`` below ``[sky]`` and ``quality/default.toml``
    below ``[quality]``, and ``[masters] rules`` / ``library``."""
    known: dict[tuple[str, ...], set[str]] = {}

    def collect(table: dict[str, Any], where: tuple[str, ...]) -> None:
        for key, value in table.items():
            known.setdefault(where, set()).add(key)
            if isinstance(value, dict):
                collect(value, where + (key,))

    configs = resource_dir("configs")
    collect(read_toml(configs / "archive.toml"), ())
    collect(read_toml(configs / "copyback.toml"), ())
    reduction = read_toml(configs / "reduction.toml")
    collect(reduction, ())
    collect({"reduction": reduction}, ())
    collect({"sky": read_toml(configs / "sky.toml"), "quality": read_toml(configs / "quality" / "default.toml")}, ())
    for where, keys in _EXTRA_KEYS.items():
        known.setdefault(where[:-1], set()).add(where[-1])
        known.setdefault(where, set()).update(keys)
    return known


def unknown_keys(user: dict[str, Any], known: dict[tuple[str, ...], set[str]]) -> list[str]:
    """Dotted names of the keys of ``user`` that no part of archive reads (typing mistakes)."""
    found = []

    def walk(table: dict[str, Any], where: tuple[str, ...]) -> None:
        if where in _FREE_TABLES:
            return
        for key, value in table.items():
            if key not in known.get(where, set()):
                found.append(".".join(where + (key,)))
            elif isinstance(value, dict):
                walk(value, where + (key,))

    walk(user, ())
    return found


_warned: set[tuple[str, str]] = set()


def read_user_file(path: Path) -> dict[str, Any]:
    """The user file's tables, each unknown key warned of once (naming the key and the file).

    Raises
    ------
    ConfigError
        The file cannot be read or is not valid TOML.
    """
    user = read_toml(path)
    for key in unknown_keys(user, known_keys()):
        if (str(path), key) not in _warned:
            _warned.add((str(path), key))
            log.warning("%s: unknown configuration key %r (ignored)", path, key)
    return user


@dataclass(frozen=True)
class Settings:
    """The effective configuration.

    Attributes
    ----------
    database_url : str
        SQLAlchemy URL or SQLite path; empty for :func:`default_database_path`.
    sqlite_busy_timeout_s : float
        Seconds a SQLite connection waits for another writer.
    workers : int
        Ingest processes reading and writing batches of files (0: one per core).
    batch_size : int
        Files per catalogue transaction, at most.
    sites : dict
        Site longitude (deg, east positive) per instrument name.
    raw : dict
        The whole merged configuration, for sections other modules own.
    """

    database_url: str = ""
    sqlite_busy_timeout_s: float = 60.0
    workers: int = 0
    batch_size: int = 1000
    sites: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def load_settings(overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Merge the configuration layers into :class:`Settings`.

    Parameters
    ----------
    overrides : dict, optional
        Section -> key -> value from the command line; ``None`` values are ignored.

    Raises
    ------
    ConfigError
        A layer is unreadable, or a value has the wrong type.
    """
    merged = read_toml(resource_dir("configs") / "archive.toml")
    user = user_config_path()
    if os.environ.get("ARCHIVE_CONFIG") and not user.is_file():
        raise ConfigError(f"ARCHIVE_CONFIG names {user}, which is not a file")
    if user.is_file():
        merged = merge(merged, read_user_file(user))
    merged = apply_layers(merged, ENVIRONMENT, overrides)
    db, ingest = merged.get("database", {}), merged.get("ingest", {})  # defaults: configs/archive.toml
    sites = merged.get("sites", {})
    if not isinstance(sites, dict):
        raise ConfigError(f"invalid configuration value: [sites] must be a table of instrument = longitude, not {sites!r}")
    return Settings(
        database_url=str(setting(db, "database", "url", str)),
        sqlite_busy_timeout_s=setting(db, "database", "sqlite_busy_timeout_s", float),
        workers=setting(ingest, "ingest", "workers", int),
        batch_size=max(1, setting(ingest, "ingest", "batch_size", int)),
        sites={str(k): setting(sites, "sites", k, float) for k in sites},
        raw=merged,
    )


def setting(table: dict[str, Any], section: str, key: str, kind: type) -> Any:
    """``table[key]`` as ``kind`` (``int``, ``float`` or ``str``); a missing key or a value of
    another kind is a :class:`ConfigError` naming ``[section] key`` and the value.

    Integers take whole numbers, or text of one (environment variables); floats take
    numbers or text of one; booleans are neither.
    """
    if key not in table:
        raise ConfigError(f"configuration has no [{section}] {key}")
    value = table[key]
    try:
        if isinstance(value, bool) or (kind is not str and isinstance(value, (list, dict))):
            raise ValueError
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except (TypeError, ValueError):
        what = {int: "a whole number", float: "a number", str: "text"}[kind]
        raise ConfigError(f"invalid configuration value: [{section}] {key} = {value!r} is not {what}") from None
