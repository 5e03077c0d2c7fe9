"""Gathering frames out of the catalogue: copyback to a folder, and multi-night projects.

By phase: :mod:`~archive.gather.config` (the settings of both, ``configs/copyback.toml``),
:mod:`~archive.gather.exposures` (which frames, grouped into exposures by DATE-OBS),
:mod:`~archive.gather.naming` (destination names), :mod:`~archive.gather.destination` (one
writer per folder, recovery of an interrupted one) and :mod:`~archive.gather.copyback` (the
transfer: every file written is verified and recorded as a new copy of its frame);
:mod:`~archive.gather.projects` builds on them.
"""

from archive.errors import DestinationBusyError
from archive.gather.config import GatherConfig, load_gather_config
from archive.gather.copyback import CopybackSummary, copyback, plan_copyback
from archive.gather.destination import hold_destination, recover_destination
from archive.gather.exposures import Selection, select_exposures

__all__ = [
    "CopybackSummary", "DestinationBusyError", "GatherConfig", "Selection", "copyback", "hold_destination",
    "load_gather_config", "plan_copyback", "recover_destination", "select_exposures",
]
