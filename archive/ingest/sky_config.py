"""The sky settings: which frames get a footprint, the keywords of focal length and pixel
size, and the plate solver's parameters (``configs/sky.toml``, then the user file's ``[sky]``
table). Apart from :mod:`archive.ingest.sky` so that reading them loads no WCS library: an
ingest of frames that get no footprint (masters, raw calibrations) never imports astropy.wcs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from archive.config import Settings, merge, read_toml
from archive.errors import ConfigError
from archive.resources import resource_dir


@dataclass(frozen=True)
class SkyConfig:
    """The sky settings (``configs/sky.toml`` merged with the user file's ``[sky]`` table).

    Attributes
    ----------
    image_types : tuple of str
        Image types that get a footprint.
    focal_length, pixel_size_x, pixel_size_y : tuple of str
        Header keywords of focal length (mm) and pixel size (um), first found wins.
    pixel_size_includes_binning : bool
        Whether the pixel size keywords already include the binning.
    solve_in_night : bool
        ``archive night`` solves lights without a WCS.
    solver : str
        The solve-field command.
    cpu_limit_s, min_field_arcmin, scale_tolerance, search_radius_deg, downsample, objects
        Solver parameters (see ``configs/sky.toml``).
    """

    image_types: tuple[str, ...] = ("light",)
    focal_length: tuple[str, ...] = ("FOCALLEN",)
    pixel_size_x: tuple[str, ...] = ("XPIXSZ",)
    pixel_size_y: tuple[str, ...] = ("YPIXSZ",)
    pixel_size_includes_binning: bool = True
    solve_in_night: bool = True
    solver: str = "solve-field"
    cpu_limit_s: int = 30
    min_field_arcmin: float = 20.0
    scale_tolerance: float = 0.2
    search_radius_deg: float = 5.0
    downsample: int = 2
    objects: int = 200


def _config_from(data: Mapping[str, Any]) -> SkyConfig:
    try:
        fp, solve = data["footprint"], data["solve"]
        return SkyConfig(
            image_types=tuple(fp["image_types"]), focal_length=tuple(fp["focal_length"]),
            pixel_size_x=tuple(fp["pixel_size_x"]), pixel_size_y=tuple(fp["pixel_size_y"]),
            pixel_size_includes_binning=bool(fp["pixel_size_includes_binning"]),
            solve_in_night=bool(solve["in_night"]), solver=str(solve["command"]),
            cpu_limit_s=int(solve["cpu_limit_s"]), min_field_arcmin=float(solve["min_field_arcmin"]),
            scale_tolerance=float(solve["scale_tolerance"]),
            search_radius_deg=float(solve["search_radius_deg"]), downsample=int(solve["downsample"]),
            objects=int(solve["objects"]),
        )
    except KeyError as exc:
        raise ConfigError(f"sky configuration has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid sky configuration value: {exc}") from exc


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, Any]:
    return read_toml(resource_dir("configs") / "sky.toml")


def load_sky_config(settings: Settings | None = None) -> SkyConfig:
    """The sky configuration: ``configs/sky.toml``, then the user file's ``[sky]`` table.

    Raises
    ------
    ConfigError
        A key is missing or has the wrong type.
    """
    data = _bundled()
    if settings is not None and isinstance(settings.raw.get("sky"), dict):
        data = merge(data, settings.raw["sky"])
    return _config_from(data)
