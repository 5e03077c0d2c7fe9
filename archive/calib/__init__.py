"""The master calibration library: matching rules as data, building masters, selecting them.

* :mod:`archive.calib.rules` reads ``configs/matching/*.toml`` (a default, overridable per
  instrument); the same rules group raw frames into masters and select masters for lights;
* :mod:`archive.calib.combine` combines images in blocks of rows (chunked median or
  sigma-clipped mean, bounded memory; pixels only);
* :mod:`archive.calib.plan` groups raw calibrations into masters to build;
* :mod:`archive.calib.masters` builds them and records them with their provenance;
* :mod:`archive.calib.library` keeps the library (its folder, bad flags, validity);
* :mod:`archive.calib.selection` holds what master selection decides (:class:`Selection`,
  :class:`Verdict`) and the rules' values it compares;
* :mod:`archive.calib.select` chooses a master for one frame with every candidate explained
  (:func:`select_master`), :mod:`archive.calib.select_sql` for many frames with set-based SQL
  (:func:`select_masters`), the same answer;
* :mod:`archive.calib.missing` reports the frames no master can calibrate.
"""

from importlib import import_module
from typing import Any

#: name -> module: imported on first use, so that the pixel code (archive.calib.combine) loads
#: without the database layers (PEP 562).
_EXPORTS = {
    "combine_files": "combine", "MasterBuildError": "combine",
    "BuildSummary": "masters", "build_masters": "masters",
    "default_library": "library", "library_table": "library", "mark_bad": "library", "set_validity": "library",
    "MasterPlan": "plan", "describe": "plan", "plan_masters": "plan",
    "KindRules": "rules", "MatchingRules": "rules", "RuleBook": "rules", "default_rulebook": "rules",
    "Selection": "selection", "Verdict": "selection",
    "explain_selection": "select", "explain_selections": "select", "interpolation_weights": "select",
    "record_selection": "select", "select_master": "select",
    "select_masters": "select_sql", "missing_calibrations": "missing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"archive.calib.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'archive.calib' has no attribute {name!r}")
