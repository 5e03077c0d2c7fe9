"""The reduction configuration: ``configs/reduction.toml``, layered like the rest.

Lowest first: the bundled ``configs/reduction.toml``; the ``[reduction]`` table of the user
file (``$ARCHIVE_CONFIG`` or ``~/.config/archive/config.toml``, same keys); the environment
variables ``ARCHIVE_IMAGING_ROOT`` and ``ARCHIVE_PRODUCTS``; explicit overrides (flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.config import Settings, apply_layers, data_home, load_settings, merge, read_toml
from archive.errors import ConfigError
from archive.resources import resource_dir

ENVIRONMENT = {
    "ARCHIVE_IMAGING_ROOT": ("night", "imaging_root"),
    "ARCHIVE_PRODUCTS": ("output", "root"),
}


@dataclass(frozen=True)
class ReductionConfig:
    """The effective reduction settings (see ``configs/reduction.toml`` for each key).

    Attributes
    ----------
    imaging_root : Path or None
        Where ``archive night`` searches for folders.
    date_formats : tuple of str
        strftime formats of the default search (last night's date).
    output_root : Path or None
        Where products go; ``None``: see :meth:`products_root`.
    layout : dict of str to str
        Path templates of calibrated, registered and stacked files, relative to the output root.
    previews : bool
        Write PNG previews of stacks.
    calibrate, register, stack, executor : dict
        The sections of the same names.
    version : int
    """

    imaging_root: Path | None = None
    date_formats: tuple[str, ...] = ("%Y-%m-%d", "%Y%m%d")
    output_root: Path | None = None
    layout: dict[str, str] = field(default_factory=dict)
    previews: bool = False
    calibrate: dict[str, Any] = field(default_factory=dict)
    register: dict[str, Any] = field(default_factory=dict)
    stack: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def products_root(self) -> Path:
        """The output root: configured, else ``<imaging_root>/../reduced``, else
        ``$XDG_DATA_HOME/archive/products``."""
        if self.output_root:
            return self.output_root
        if self.imaging_root:
            return self.imaging_root.parent / "reduced"
        return data_home() / "products"


def load_reduction_config(
    settings: Settings | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> ReductionConfig:
    """Merge the layers into a :class:`ReductionConfig`.

    Raises
    ------
    ConfigError
        A layer cannot be read, or a value has the wrong type.
    """
    settings = settings or load_settings()
    merged = read_toml(resource_dir("configs") / "reduction.toml")
    merged = apply_layers(merge(merged, settings.raw.get("reduction", {})), ENVIRONMENT, overrides)
    try:
        night, output = merged.get("night", {}), merged.get("output", {})
        root = night.get("imaging_root") or None
        out = output.get("root") or None
        stack = dict(merged.get("stack", {}))
        if stack.get("method", "median") not in ("median", "sigma_clip"):
            raise ConfigError(f"[stack] method must be 'median' or 'sigma_clip', not {stack['method']!r}")
        return ReductionConfig(
            imaging_root=Path(root).expanduser().absolute() if root else None,
            date_formats=tuple(night.get("date_formats", ("%Y-%m-%d", "%Y%m%d"))),
            output_root=Path(out).expanduser().absolute() if out else None,
            layout={k: str(output[k]) for k in ("calibrated", "registered", "stacked")},
            previews=bool(output.get("previews", False)),
            calibrate=dict(merged.get("calibrate", {})),
            register=dict(merged.get("register", {})),
            stack=stack,
            executor=dict(merged.get("executor", {})),
            version=int(merged.get("version", 1)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid reduction configuration: {exc}") from exc
