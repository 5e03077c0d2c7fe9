"""The reduction configuration: ``configs/reduction.toml``, layered like the rest.

Lowest first: the bundled ``configs/reduction.toml``; the same sections in the user file
(``$ARCHIVE_CONFIG`` or ``~/.config/archive/config.toml``), written as in
``configs/reduction.toml`` (``[night] imaging_root = ...``) or below a ``[reduction]`` table
(``[reduction.night]``; the top-level form wins where both set a key); the environment
variables ``ARCHIVE_IMAGING_ROOT`` and ``ARCHIVE_PRODUCTS``; explicit overrides (flags).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.reduce.colour import DEMOSAIC_METHODS
from archive.calib.combine import COMBINE_METHODS, NORMALIZATIONS, CombineSettings
from archive.config import (
    REDUCTION_SECTIONS,
    Settings,
    apply_layers,
    data_home,
    load_settings,
    merge,
    setting,
    read_toml,
)
from archive.errors import ConfigError, UnsafePathError
from archive.files import render_path
from archive.resources import resource_dir

ENVIRONMENT = {
    "ARCHIVE_IMAGING_ROOT": ("night", "imaging_root"),
    "ARCHIVE_PRODUCTS": ("output", "root"),
}


#: Fields a layout template may use, per product: the light's (first input's) night, target,
#: filter, instrument and exposure time (s), the input file's name without its FITS ending
#: (``stem``), and ``fp``: the first 12 hex digits of the reduction's fingerprint (for stacks
#: also ``group``, its first 10). Every value is made safe by :func:`archive.files.safe_component`.
LAYOUT_FIELDS = {
    "calibrated": frozenset({"night", "target", "filter", "instrument", "exposure", "stem", "fp"}),
    "registered": frozenset({"night", "target", "filter", "instrument", "exposure", "stem", "fp"}),
    "stacked": frozenset({"night", "target", "filter", "instrument", "exposure", "group", "fp"}),
}
#: One of these must be in each template, so that products made from different inputs
#: (or with different parameters) never share a path.
LAYOUT_UNIQUE = {"calibrated": ("fp",), "registered": ("fp",), "stacked": ("fp", "group")}
_PRODUCT_ENDINGS = (".fits", ".fit", ".fts")
#: Keys of ``[stack]`` besides the combine settings (:class:`archive.calib.combine.CombineSettings`).
_STACK_KEYS = ("method", "per_night", "weights", "normalization")


def check_layout(kind: str, template: Any) -> str:
    """``template`` if it is a valid layout of ``kind`` products, else :class:`ConfigError`.

    Valid: a string naming only the fields of :data:`LAYOUT_FIELDS` (no format specs or
    conversions), including one of :data:`LAYOUT_UNIQUE`, giving a plain relative path (no
    leading ``/``, no empty, ``.`` or ``..`` parts) that ends in ``.fits``, ``.fit`` or ``.fts``.

    Raises
    ------
    ConfigError
        The template breaks one of these rules.
    """
    where = f"[output] {kind} = {template!r}"
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{where}: must be a non-empty path template")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid template: {exc}") from exc
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LAYOUT_FIELDS[kind]:
            raise ConfigError(f"{where}: unknown field {{{name}}}; use {', '.join(sorted(LAYOUT_FIELDS[kind]))}")
        if spec or conversion:
            raise ConfigError(f"{where}: field {{{name}}} takes no format spec or conversion")
        names.add(name)
    if not names & set(LAYOUT_UNIQUE[kind]):
        raise ConfigError(f"{where}: must contain {' or '.join('{' + n + '}' for n in LAYOUT_UNIQUE[kind])} so that "
                          "products of different inputs never share a path")
    if not template.lower().endswith(_PRODUCT_ENDINGS):
        raise ConfigError(f"{where}: must end in .fits, .fit or .fts")
    try:
        render_path(Path("/products"), template, **{n: "x" for n in LAYOUT_FIELDS[kind]})
    except UnsafePathError as exc:
        raise ConfigError(f"{where}: must be a plain path relative to the output root ({exc})") from exc
    return template


@dataclass(frozen=True)
class ReductionConfig:
    """The effective reduction settings (see ``configs/reduction.toml`` for each key).

    Attributes
    ----------
    imaging_root : Path or None
        Where ``archive night`` searches for folders (``[night] imaging_root``).
    date_formats : tuple of str
        strftime formats of the default search (last night's date).
    output_root : Path or None
        Where products go; ``None``: see :meth:`products_root`.
    layout : dict of str to str
        Path templates of calibrated, registered and stacked files, relative to the output root.
    previews : bool
        Write PNG previews of stacks.
    calibrate, register, executor : dict
        The sections of the same names.
    stack : dict
        ``[stack]``: ``method``, ``per_night``, ``weights``, ``normalization``, and the combine settings ``sigma_low``,
        ``sigma_high`` (float), ``maxiters`` (int), ``memory_limit_mb`` (float), checked and
        typed (:class:`archive.calib.combine.CombineSettings`); no other key.
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
        """The one output root of ``archive night`` and ``archive reduce``: ``[output] root``
        (``ARCHIVE_PRODUCTS``, ``--output``), else ``$XDG_DATA_HOME/archive/products``
        (``~/.local/share/archive/products``)."""
        if self.output_root:
            return self.output_root
        return data_home() / "products"


def load_reduction_config(
    settings: Settings | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> ReductionConfig:
    """Merge the layers into a :class:`ReductionConfig`.

    Raises
    ------
    ConfigError
        A layer cannot be read, a value has the wrong type, or a layout template is invalid
        (:func:`check_layout`).
    """
    settings = settings or load_settings()
    merged = read_toml(resource_dir("configs") / "reduction.toml")
    user = settings.raw.get("reduction", {})
    if not isinstance(user, dict):
        raise ConfigError(f"invalid configuration value: [reduction] must be a table, not {user!r}")
    user = merge(user, {k: settings.raw[k] for k in REDUCTION_SECTIONS if isinstance(settings.raw.get(k), dict)})
    merged = apply_layers(merge(merged, user), ENVIRONMENT, overrides)
    try:
        night, output = merged.get("night", {}), merged.get("output", {})
        root = night.get("imaging_root") or None
        out = output.get("root") or None
        stack = dict(merged.get("stack", {}))
        if stack.get("method", "median") not in COMBINE_METHODS:
            raise ConfigError(f"[stack] method must be one of {COMBINE_METHODS}, not {stack['method']!r}")
        if stack.get("weights", "none") not in ("none", "signal"):
            raise ConfigError(f"[stack] weights must be 'none' or 'signal', not {stack['weights']!r}")
        if stack.get("normalization", "none") not in NORMALIZATIONS:
            raise ConfigError(f"[stack] normalization must be one of {NORMALIZATIONS}, not {stack['normalization']!r}")
        combine = CombineSettings.from_table(stack, "[stack]", other_keys=_STACK_KEYS)
        stack.update(vars(combine))
        demosaic = merged.get("calibrate", {}).get("demosaic", "bilinear")
        if demosaic not in DEMOSAIC_METHODS:
            raise ConfigError(f"[calibrate] demosaic must be one of {sorted(DEMOSAIC_METHODS)}, not {demosaic!r}")
        return ReductionConfig(
            imaging_root=Path(root).expanduser().absolute() if root else None,
            date_formats=tuple(night.get("date_formats", ("%Y-%m-%d", "%Y%m%d"))),
            output_root=Path(out).expanduser().absolute() if out else None,
            layout={k: check_layout(k, output[k]) for k in LAYOUT_FIELDS},
            previews=bool(output.get("previews", False)),
            calibrate=dict(merged.get("calibrate", {})),
            register=dict(merged.get("register", {})),
            stack=stack,
            executor={**merged.get("executor", {}),
                      "workers": setting(merged.get("executor", {"workers": 0}), "executor", "workers", int)},
            version=int(merged.get("version", 1)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid reduction configuration: {exc}") from exc
