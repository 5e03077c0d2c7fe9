"""Destination names: a gathered frame's file name, from a template and the frame's fields.

A template (``configs/copyback.toml``; the fields are
:data:`archive.gather.config.FIELDS`) is filled with the frame's values, each made safe as
one path component (:func:`archive.files.safe_component`; a missing value becomes
``missing`` of the configuration), and ``{seq}``, the first number whose name is free: a name
is never overwritten.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from sqlalchemy import Row

from archive.files import fits_ending, render_path, safe_component
from archive.gather.config import GatherConfig


def _exposure_text(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return f"{seconds:g}"


def name_fields(row: Row, source_path: str, *, target: str | None, config: GatherConfig) -> dict[str, str]:
    """The sanitized template fields (all but ``seq``) of one frame."""
    missing = safe_component(config.missing, "unknown")
    binning = f"{row.binning_x}x{row.binning_y}" if row.binning_x and row.binning_y else None
    values = {
        "target": target or row.target,
        "object": row.target,
        "filter": row.filter_name,
        "instrument": row.instrument,
        "image_type": row.image_type,
        "night": row.night.isoformat() if row.night else None,
        "binning": binning,
        "date_obs": row.date_obs.strftime(config.date_format) if row.date_obs else None,
        "exposure": _exposure_text(row.exposure_time_s),
    }
    fields = {key: safe_component(value, missing) for key, value in values.items()}
    fields["ext"] = fits_ending(source_path)
    return fields


def destination(root: Path, template: str, fields: dict[str, str], seq: int) -> Path:
    """``root / template`` filled with ``fields`` and ``seq`` (:func:`archive.files.render_path`).

    Raises
    ------
    UnsafePathError
        The path would leave ``root`` (an absolute template, ``..`` in the template).
    """
    return render_path(root, template, seq=seq, **fields)


def free_destination(root: Path, template: str, fields: dict[str, str], *, taken: set[Path] | None = None) -> Path:
    """The first :func:`destination` (``seq`` = 1, 2, ...) that no file or link holds and that
    is not in ``taken`` (names another plan of the same run has reserved).

    Raises
    ------
    UnsafePathError
        The path would leave ``root``.
    """
    seq = 1
    while (path := destination(root, template, fields, seq)) in (taken or ()) or os.path.lexists(path):
        seq += 1
    return path
