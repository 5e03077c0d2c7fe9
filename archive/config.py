"""Layered configuration: package defaults, user file, environment, command line.

The order, lowest first, is written once here and in ``configs/archive.toml``:

1. ``configs/archive.toml`` shipped with the package;
2. the user file ``$ARCHIVE_CONFIG``, else ``~/.config/archive/config.toml``;
3. environment variables (``ARCHIVE_DB``, ``ARCHIVE_WORKERS``, ``ARCHIVE_BATCH_SIZE``);
4. explicit overrides (command-line flags) passed to :func:`load_settings`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.errors import ConfigError
from archive.resources import resource_dir

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
        return Path(explicit)
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "archive" / "config.toml"


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
    if user.is_file():
        merged = merge(merged, read_toml(user))
    merged = apply_layers(merged, ENVIRONMENT, overrides)
    try:
        db, ingest = merged["database"], merged["ingest"]  # defaults: configs/archive.toml
        return Settings(
            database_url=str(db["url"]),
            sqlite_busy_timeout_s=float(db["sqlite_busy_timeout_s"]),
            workers=int(ingest["workers"]),
            batch_size=max(1, int(ingest["batch_size"])),
            sites={str(k): float(v) for k, v in merged.get("sites", {}).items()},
            raw=merged,
        )
    except KeyError as exc:
        raise ConfigError(f"configuration has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration value: {exc}") from exc
