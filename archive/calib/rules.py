"""Matching rules of the master calibration library, read from ``configs/matching/*.toml``.

The same :class:`KindRules` group raw calibrations into masters and select masters for
lights, so the two never drift apart (LCO BANZAI keeps its ``CALIBRATION_SET_CRITERIA`` for
both; Gemini's calibration manager reads like the same prose: match these descriptors, within
this tolerance, not older than this interval, nearest in time first).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.calib.combine import COMBINE_METHODS, CombineSettings
from archive.config import Settings, for_instrument, load_settings, merge, read_toml
from archive.db.models import BADPIX, CALIBRATION_KINDS
from archive.errors import ConfigError
from archive.resources import resource_dir

#: Normalized names usable in ``exact`` and ``tolerance`` (the catalogue's frame columns;
#: ``instrument`` is compared through ``frames.instrument_id``).
MATCH_COLUMNS = (
    "instrument", "binning_x", "binning_y", "naxis1", "naxis2", "gain", "offset", "readout_mode",
    "filter_name", "telescope", "set_temp_c", "ccd_temp_c", "exposure_time_s", "bayer_pattern",
)
#: The text columns among them (compared for equality only, never within a tolerance).
TEXT_COLUMNS = ("readout_mode", "filter_name", "telescope", "bayer_pattern")


@dataclass(frozen=True)
class KindRules:
    """The rules of one calibration kind.

    Attributes
    ----------
    kind : {'bias', 'dark', 'flat', 'badpix'}
        ``badpix``: the bad-pixel mask (:mod:`archive.calib.badpix`); ``exact``,
        ``tolerance`` and ``max_age_days`` select it, ``min_frames`` is the fewest lights a
        mask made from a sequence's lights needs.
    exact : tuple of str
        Columns that must be equal (NULL matches NULL only).
    tolerance : dict of str to float
        Column -> largest allowed absolute difference (set_temp_c in deg C).
    max_age_days : float
        Largest |DATE-OBS difference| between master and frame, days.
    min_frames : int
        Fewest raw frames a master is built from.
    combine : {'median', 'mean', 'sigma_clip'}
        The combine method (:mod:`archive.calib.combine`).
    exposure_tolerance_s : float
        Darks: exposures this close (s) count as equal.
    scale : bool
        Darks: allow the nearest longer bias-subtracted master scaled by exposure time.
    scale_up : bool
        Darks: when neither an exact, a longer nor an interpolated dark exists, allow the
        nearest shorter bias-subtracted master scaled up by exposure time (ccdproc's
        ``subtract_dark`` with ``scale=True``; its noise is scaled with it).
    interpolate : bool
        Darks: allow dark = A*t + B fitted over bias-subtracted masters of several exposures.
    ladder : bool
        Darks: when a group's darks are too few at every exposure for a master (a dark
        ladder), fit a per-pixel dark-current model over them (a ``dark_model`` master,
        :mod:`archive.calib.ladder`) and select it for lights within its exposure range.
    ladder_min_exposures : int
        Darks: fewest distinct exposures a dark model is fitted over.
    """

    kind: str
    exact: tuple[str, ...]
    tolerance: dict[str, float] = field(default_factory=dict)
    max_age_days: float = 30.0
    min_frames: int = 3
    combine: str = "median"
    exposure_tolerance_s: float = 0.01
    scale: bool = False
    scale_up: bool = False
    interpolate: bool = False
    ladder: bool = False
    ladder_min_exposures: int = 3


@dataclass(frozen=True)
class MatchingRules:
    """The rules of every kind for one instrument, with their version and combine settings.

    Attributes
    ----------
    version : str
        ``<name>:<version>`` of the rules file(s), recorded with masters and decisions.
    kinds : dict of str to KindRules
        'bias', 'dark', 'flat', and 'badpix' when the rules have a ``[badpix]`` table.
    sigma_low, sigma_high : float
        Sigma-clipping bounds of ``combine = 'sigma_clip'`` (in standard deviations).
    maxiters : int
        Sigma-clipping iterations.
    memory_limit_mb : float
        Memory for one combine, MB (:class:`archive.calib.combine.CombineSettings`, read from
        the ``[combine]`` table: ``sigma_low``, ``sigma_high``, ``maxiters``, ``memory_limit_mb``).
    required : tuple of str or None
        The calibration kinds a light of this instrument must have before it is calibrated
        (:func:`archive.calib.required.required_kinds`); None: every kind of which the
        library holds a master of the instrument ("available").
    """

    version: str
    kinds: dict[str, KindRules]
    sigma_low: float = 3.0
    sigma_high: float = 3.0
    maxiters: int = 5
    memory_limit_mb: float = 2048.0
    required: tuple[str, ...] | None = None

    def __getitem__(self, kind: str) -> KindRules:
        try:
            return self.kinds[kind]
        except KeyError:
            raise ConfigError(f"no matching rules for calibration kind {kind!r}") from None


def _parse(raw: dict[str, Any], source: str) -> MatchingRules:
    try:
        kinds = {}
        # the bad-pixel mask's table is optional: rules without one select no mask
        for kind in CALIBRATION_KINDS + ((BADPIX,) if BADPIX in raw else ()):
            section = raw[kind]
            exact = tuple(section.get("exact", ()))
            tolerance = {str(k): float(v) for k, v in section.get("tolerance", {}).items()}
            unknown = [c for c in (*exact, *tolerance) if c not in MATCH_COLUMNS]
            if unknown:
                raise ConfigError(f"{source}: [{kind}] names unknown columns {unknown}; choose from {MATCH_COLUMNS}")
            textual = [c for c in tolerance if c in TEXT_COLUMNS]
            if textual:
                raise ConfigError(f"{source}: [{kind}] tolerance on text columns {textual}; put them in exact")
            combine = str(section.get("combine", "median"))
            if combine not in COMBINE_METHODS:
                raise ConfigError(f"{source}: [{kind}] combine = {combine!r}; choose from {COMBINE_METHODS}")
            kinds[kind] = KindRules(
                kind=kind, exact=exact, tolerance=tolerance,
                max_age_days=float(section.get("max_age_days", 30)),
                min_frames=int(section.get("min_frames", 3)), combine=combine,
                exposure_tolerance_s=float(section.get("exposure_tolerance_s", 0.01)),
                scale=bool(section.get("scale", False)), scale_up=bool(section.get("scale_up", False)),
                interpolate=bool(section.get("interpolate", False)),
                ladder=bool(section.get("ladder", False)),
                ladder_min_exposures=max(2, int(section.get("ladder_min_exposures", 3))),
            )
        required = raw.get("required", "available")
        if required != "available":
            if isinstance(required, str) or not all(k in CALIBRATION_KINDS for k in required):
                raise ConfigError(f"{source}: required = {required!r}; give \"available\" or a list of "
                                  f"{list(CALIBRATION_KINDS)}")
            required = tuple(k for k in CALIBRATION_KINDS if k in required)
        else:
            required = None
        combine = CombineSettings.from_table(raw.get("combine", {}), f"{source}: [combine]")
        return MatchingRules(
            required=required,
            version=f"{raw.get('name', 'default')}:{raw.get('version', '0')}",
            kinds=kinds, sigma_low=combine.sigma_low, sigma_high=combine.sigma_high, maxiters=combine.maxiters,
            memory_limit_mb=combine.memory_limit_mb,
        )
    except KeyError as exc:
        raise ConfigError(f"{source}: matching rules miss {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid matching rule: {exc}") from exc


class RuleBook:
    """The default matching rules and the per-instrument overrides of a folder.

    Parameters
    ----------
    folder : Path, optional
        A folder with ``default.toml`` and optional override files (default the bundled
        ``configs/matching``).

    Raises
    ------
    ConfigError
        No ``default.toml``, or a file is invalid.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else resource_dir("configs") / "matching"
        default_file = self.folder / "default.toml"
        if not default_file.is_file():
            raise ConfigError(f"{self.folder}: no default.toml matching rules")
        self._default_raw = read_toml(default_file)
        self.default = _parse(self._default_raw, str(default_file))
        self._by_instrument: dict[str, MatchingRules] = {}
        for path in sorted(self.folder.glob("*.toml")):
            if path.name == "default.toml":
                continue
            extra = read_toml(path)
            instruments = extra.pop("instruments", None)
            if not instruments:
                raise ConfigError(f"{path}: an override file needs instruments = [...]")
            extra.setdefault("name", path.stem)
            rules = _parse(merge(self._default_raw, extra), str(path))
            for name in instruments:
                self._by_instrument[str(name)] = rules

    def for_instrument(self, name: str | None) -> MatchingRules:
        """The rules of instrument ``name``.

        Parameters
        ----------
        name : str or None
            Instrument name (``instruments.name``); an :class:`archive.config.InstrumentName`
            also finds the override of its model (:func:`archive.config.for_instrument`).

        Returns
        -------
        MatchingRules
            Its override (the unit's, else its model's) merged over the default, else the default.
        """
        return for_instrument(self._by_instrument, name, self.default)


def default_rulebook(settings: Settings | None = None) -> RuleBook:
    """The rules every step uses when given none: the folder named by ``[masters] rules`` in
    the configuration, else the bundled ``configs/matching``.

    Each folder is read once per process. Callers judging many frames resolve this once and
    pass the result on.

    Raises
    ------
    ConfigError
        The folder or a file in it is invalid.
    """
    configured = (settings or load_settings()).raw.get("masters", {}).get("rules")
    return _rulebook(str(Path(configured).expanduser()) if configured else None)


@functools.cache
def _rulebook(folder: str | None) -> RuleBook:
    return RuleBook(Path(folder) if folder else None)
