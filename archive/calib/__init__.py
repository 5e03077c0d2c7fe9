"""The master calibration library: matching rules as data, building masters, selecting them.

* :mod:`archive.calib.rules` reads ``configs/matching/*.toml`` (a default, overridable per
  instrument); the same rules group raw frames into masters and select masters for lights;
* :mod:`archive.calib.masters` builds masters (chunked median or sigma-clipped mean, bounded
  memory), ingests them with their provenance, and keeps the library (bad flags, validity,
  masters made elsewhere);
* :mod:`archive.calib.select` chooses masters for frames, one with every candidate explained
  (:func:`select_master`) or many with set-based SQL (:func:`select_masters`).
"""

from archive.calib.masters import (
    BuildSummary, MasterBuildError, build_masters, combine_files, default_library, library_table, mark_bad,
    plan_masters,
    set_validity, sync_library,
)
from archive.calib.rules import KindRules, MatchingRules, RuleBook, load_rules
from archive.calib.select import (
    Selection, Verdict, explain_selection, interpolation_weights, missing_calibrations, record_selection,
    select_master, select_masters,
)
from archive.errors import CalibrationNotFoundError

__all__ = [
    "BuildSummary", "CalibrationNotFoundError", "KindRules", "MasterBuildError", "MatchingRules", "RuleBook",
    "Selection", "Verdict", "build_masters", "combine_files", "default_library", "explain_selection",
    "interpolation_weights", "library_table", "load_rules", "mark_bad", "missing_calibrations", "plan_masters", "record_selection", "select_master",
    "select_masters", "set_validity", "sync_library",
]
