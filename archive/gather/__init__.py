"""Gathering frames out of the catalogue: copyback to a folder, and multi-night projects.

Both are queries over the catalogue plus DATE-OBS de-duplication; every file written is
verified and recorded as a new copy of its frame (see :mod:`archive.gather.copyback`).
"""

from archive.gather.copyback import (
    CopybackSummary,
    GatherConfig,
    Selection,
    copyback,
    load_gather_config,
    plan_copyback,
    safe_component,
    select_exposures,
)

__all__ = [
    "CopybackSummary", "GatherConfig", "Selection", "copyback", "load_gather_config", "plan_copyback",
    "safe_component", "select_exposures",
]
