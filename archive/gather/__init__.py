"""Gathering frames out of the catalogue: copyback to a folder, and multi-night projects.

Both are queries over the catalogue plus DATE-OBS de-duplication; every file written is
verified and recorded as a new copy of its frame (see :mod:`archive.gather.copyback`).
"""

from archive.gather.copyback import (
    CopybackSummary,
    DestinationBusyError,
    GatherConfig,
    Selection,
    copyback,
    hold_destination,
    load_gather_config,
    plan_copyback,
    recover_destination,
    select_exposures,
)

__all__ = [
    "CopybackSummary", "DestinationBusyError", "GatherConfig", "Selection", "copyback", "hold_destination",
    "load_gather_config", "plan_copyback", "recover_destination", "select_exposures",
]
