"""The gather configuration: copyback's and the projects' settings, and destination templates.

``configs/copyback.toml`` (``[copyback]`` and ``[project]``, overridable in the user file) is
the one source of the values; :func:`load_gather_config` reads it once into a
:class:`GatherConfig`, which copyback (:mod:`archive.gather.copyback`) and projects
(:mod:`archive.gather.projects`) receive. :func:`check_template` is the one check of a
destination name template (the fields it may use are :data:`FIELDS`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from archive.config import Settings, load_settings, merge, read_toml
from archive.errors import ConfigError
from archive.resources import resource_dir

#: The fields of a destination name template (see ``configs/copyback.toml``).
FIELDS = ("target", "object", "filter", "instrument", "image_type", "night", "binning", "date_obs", "exposure", "seq", "ext")


@dataclass(frozen=True)
class GatherConfig:
    """Copyback and project settings, made by :func:`load_gather_config`.

    ``configs/copyback.toml`` is the one source of the defaults (overridable in the user
    file); this class has none of its own.

    Attributes
    ----------
    template : str
        Destination name below the copyback folder; fields are listed in ``copyback.toml``.
    date_format : str
        ``strftime`` format of ``{date_obs}`` (UTC).
    missing : str
        Field value when the frame has none.
    position_radius_arcmin : float
        Position-match radius, arcmin.
    batch_files : int
        Files copied per catalogue transaction.
    lights_folder, masters_folder : str
        A project's folders of lights and of masters, below its folder (``{filter}`` allowed).
    project_lights, project_masters : str
        Name templates of a project's lights and masters in those folders.
    super_luminance : str
        File name of a project's super-luminance list.
    super_luminance_filters : tuple of str
        Filters whose lights make the super-luminance (compared case-insensitively).
    """

    template: str
    date_format: str
    missing: str
    position_radius_arcmin: float
    batch_files: int
    lights_folder: str
    project_lights: str
    masters_folder: str
    project_masters: str
    super_luminance: str
    super_luminance_filters: tuple[str, ...]


def load_gather_config(settings: Settings | None = None) -> GatherConfig:
    """Read ``configs/copyback.toml`` merged with the user file's ``[copyback]``/``[project]``.

    The package file holds every key (it is the only place defaults are written); the user
    file may override any of them. ``load_gather_config(Settings())`` gives the package
    defaults alone.

    Raises
    ------
    ConfigError
        The file is unreadable, a key is missing, a value has the wrong type, or a template
        lacks ``{seq}``.
    """
    settings = settings or load_settings()
    data = read_toml(resource_dir("configs") / "copyback.toml")
    data = merge(data, {k: settings.raw[k] for k in ("copyback", "project") if isinstance(settings.raw.get(k), dict)})
    cb, pr = data.get("copyback", {}), data.get("project", {})
    try:
        config = GatherConfig(
            template=str(cb["template"]),
            date_format=str(cb["date_format"]),
            missing=str(cb["missing"]),
            position_radius_arcmin=float(cb["position_radius_arcmin"]),
            batch_files=max(1, int(cb["batch_files"])),
            lights_folder=str(pr["lights_folder"]),
            project_lights=str(pr["lights"]),
            masters_folder=str(pr["masters_folder"]),
            project_masters=str(pr["masters"]),
            super_luminance=str(pr["super_luminance"]),
            super_luminance_filters=tuple(str(f) for f in pr["super_luminance_filters"]),
        )
    except KeyError as exc:
        raise ConfigError(f"configs/copyback.toml: missing key {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configs/copyback.toml: invalid value: {exc}") from exc
    for template in (config.template, config.project_lights, config.project_masters):
        check_template(template)
    return config


def check_template(template: str) -> None:
    """Check a destination template: known fields only, ``{seq}`` present, a relative path.

    Raises
    ------
    ConfigError
        Unknown field, no ``{seq}``, or an absolute template.
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"destination template {template!r}: {exc}") from exc
    unknown = fields - set(FIELDS)
    if unknown:
        raise ConfigError(f"destination template {template!r}: unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
    if "seq" not in fields:
        raise ConfigError(f"destination template {template!r} needs a {{seq}} field (names are never overwritten)")
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ConfigError(f"destination template {template!r} must be a relative path")

