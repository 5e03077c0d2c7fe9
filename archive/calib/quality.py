"""Quality rules as data (``configs/quality/*.toml``) and judging measurements by them.

Pure functions over plain values: the catalogue side (reading measurements, writing flags)
is :mod:`archive.reduce.quality`. A rule is an absolute limit (``min``/``max``) or a limit
relative to the frame's group (``group = 'below'|'above'``): the group's median minus or plus
``max(k_mad * 1.4826 * MAD, fraction * |median|)``, in the spirit of Siril's percentage
filters and PixInsight's approval expressions, with the median absolute deviation so that the
bad frames themselves barely move the limit. Every violated rule gives one :class:`Flag`
(Euclid's out-of-limit flags: the value, the limit, the rule).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from archive.config import Settings, for_instrument, load_settings, merge, read_toml
from archive.errors import ConfigError
from archive.resources import resource_dir

#: Metrics a rule may name: the numeric columns of ``frame_measurements``.
METRICS = (
    "background_adu", "noise_adu", "background_e", "noise_e", "n_stars", "fwhm_px", "fwhm_arcsec", "eccentricity",
    "saturated_fraction", "weight", "read_noise_adu", "read_noise_e", "dark_current_adu_s", "dark_current_e_s",
    "hot_pixels", "flat_snr", "flat_falloff", "changed_fraction",
)
#: 1.4826 x MAD estimates the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class QualityRule:
    """One rule (see ``configs/quality/default.toml`` for each field).

    Attributes
    ----------
    name : str
    metric : str
        One of :data:`METRICS`.
    applies_to : tuple of str
        Image types judged.
    min, max : float, optional
        Absolute limits.
    group : {'below', 'above'}, optional
        A limit relative to the group's median and MAD.
    k_mad, fraction : float
        Width of a group limit: ``max(k_mad * 1.4826 * MAD, fraction * |median|)``.
    min_group : int
        Fewest measured frames of a group for a group rule to apply.
    action : {'reject', 'warn'}
    """

    name: str
    metric: str
    applies_to: tuple[str, ...]
    min: float | None = None
    max: float | None = None
    group: str | None = None
    k_mad: float = 5.0
    fraction: float = 0.0
    min_group: int = 5
    action: str = "reject"


@dataclass(frozen=True)
class QualityRules:
    """The quality rules and the measurement settings.

    Attributes
    ----------
    version : str
        ``<name>:<version>``, recorded with every flag.
    measure : dict
        ``[measure]`` (detection threshold, keywords, ...), including its ``version``.
    rules : tuple of QualityRule
    gains : dict of str to float
        Instrument name -> gain (e-/ADU) from ``[instruments."NAME"] gain_e_per_adu``.
    limits : dict of str to dict
        Instrument name -> rule name -> ``{'min': float, 'max': float}`` (either or both) from
        ``[instruments."NAME".limits]``: an instrument's own absolute limits of a rule (a
        small smart telescope's stars are wider than a 5" rule allows). See
        :meth:`for_instrument`.
    """

    version: str
    measure: dict[str, Any] = field(default_factory=dict)
    rules: tuple[QualityRule, ...] = ()
    gains: dict[str, float] = field(default_factory=dict)
    limits: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def for_instrument(self, name: str | None) -> QualityRules:
        """The rules judging frames of the instrument ``name``: each rule with the
        instrument's own ``min``/``max`` where ``[instruments."NAME".limits]`` gives them
        (the version is the file's: a change of the limits is a change of the file)."""
        own = for_instrument(self.limits, name)
        if not own:
            return self
        rules = tuple(replace(rule, **own[rule.name]) if rule.name in own else rule for rule in self.rules)
        return replace(self, rules=rules)


@dataclass(frozen=True)
class Flag:
    """A violated rule: ``value`` broke ``limit`` (``bound`` 'min' or 'max')."""

    frame_id: int
    rule: str
    metric: str
    value: float
    limit: float
    bound: str
    scope: str
    action: str


def parse_rules(raw: Mapping[str, Any]) -> QualityRules:
    """Build :class:`QualityRules` from the TOML tables of a rules file.

    Raises
    ------
    ConfigError
        A rule names an unknown metric, has no limit, or has a malformed field.
    """
    try:
        rules = []
        for entry in raw.get("rule", []):
            rule = QualityRule(
                name=str(entry["name"]), metric=str(entry["metric"]),
                applies_to=tuple(entry.get("applies_to", ("light",))),
                min=float(entry["min"]) if "min" in entry else None,
                max=float(entry["max"]) if "max" in entry else None,
                group=entry.get("group"), k_mad=float(entry.get("k_mad", 5.0)),
                fraction=float(entry.get("fraction", 0.0)), min_group=int(entry.get("min_group", 5)),
                action=str(entry.get("action", "reject")),
            )
            if rule.metric not in METRICS:
                raise ConfigError(f"quality rule {rule.name!r}: unknown metric {rule.metric!r}; use one of "
                                  f"{', '.join(METRICS)}")
            if rule.min is None and rule.max is None and rule.group not in ("below", "above"):
                raise ConfigError(f"quality rule {rule.name!r}: give min, max or group = 'below'|'above'")
            if rule.action not in ("reject", "warn"):
                raise ConfigError(f"quality rule {rule.name!r}: action must be 'reject' or 'warn'")
            rules.append(rule)
        measure = dict(raw.get("measure", {}))
        measure.setdefault("version", "1")
        binning = measure.get("detect_binning", 1)
        if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
            raise ConfigError(f"quality [measure] detect_binning must be a whole number of pixels, 1 or more, "
                              f"not {binning!r}")
        gains = {name: float(v["gain_e_per_adu"]) for name, v in raw.get("instruments", {}).items()
                 if "gain_e_per_adu" in v}
        names = {rule.name for rule in rules}
        limits: dict[str, dict[str, dict[str, float]]] = {}
        for instrument, table in raw.get("instruments", {}).items():
            for rule_name, bounds in table.get("limits", {}).items():
                if rule_name not in names:
                    raise ConfigError(f"quality [instruments.{instrument!r}.limits]: no rule {rule_name!r}")
                unknown = set(bounds) - {"min", "max"}
                if unknown:
                    raise ConfigError(f"quality [instruments.{instrument!r}.limits] {rule_name}: only min and max, "
                                      f"not {sorted(unknown)}")
                limits.setdefault(instrument, {})[rule_name] = {k: float(v) for k, v in bounds.items()}
        return QualityRules(version=f"{raw.get('name', 'default')}:{raw.get('version', '1')}", measure=measure,
                            rules=tuple(rules), gains=gains, limits=limits)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid quality rules: {exc}") from exc


def load_quality_rules(path: str | Path | None = None, settings: Settings | None = None) -> QualityRules:
    """The quality rules: ``path``, else the bundled ``configs/quality/default.toml`` merged with
    the ``[quality]`` table of the user's configuration file.

    Raises
    ------
    ConfigError
        The file cannot be read or a rule is invalid (:func:`parse_rules`).
    """
    if path is not None:
        return parse_rules(read_toml(Path(path)))
    settings = settings or load_settings()
    raw = _bundled()
    user = settings.raw.get("quality", {})
    if user:
        raw = merge(raw, user)
        if "rule" in user:  # a user's rule list replaces the bundled one
            raw["rule"] = user["rule"]
    return parse_rules(raw)


@functools.cache
def _bundled() -> dict[str, Any]:
    return read_toml(resource_dir("configs") / "quality" / "default.toml")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def group_limit(rule: QualityRule, values: list[float]) -> float | None:
    """The limit of a group rule over the group's ``values`` (None below ``min_group``)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < rule.min_group:
        return None
    median = _median(values)
    mad = _median([abs(v - median) for v in values])
    width = max(rule.k_mad * MAD_TO_SIGMA * mad, rule.fraction * abs(median))
    return median - width if rule.group == "below" else median + width


def judge(rules: QualityRules, frames: Iterable[tuple[int, str, Hashable, Mapping[str, Any]]]) -> list[Flag]:
    """Judge measurements by the rules.

    Parameters
    ----------
    rules : QualityRules
    frames : iterable of (frame id, image type, group key, metrics)
        ``metrics`` maps metric names to values (None: not measured, never flagged). Group
        rules compare frames with the same group key (instrument, target, filter, night).

    Returns
    -------
    list of Flag
        One per violated rule and frame, in the order of ``frames`` then of the rules.
    """
    frames = list(frames)
    groups: dict[Hashable, list[Mapping[str, Any]]] = defaultdict(list)
    for _, _, key, metrics in frames:
        groups[key].append(metrics)
    limits: dict[tuple[str, Hashable], float | None] = {}
    flags: list[Flag] = []
    for frame_id, image_type, key, metrics in frames:
        for rule in rules.rules:
            if image_type not in rule.applies_to:
                continue
            value = metrics.get(rule.metric)
            if value is None or not math.isfinite(value):
                continue
            if rule.min is not None and value < rule.min:
                flags.append(Flag(frame_id, rule.name, rule.metric, value, rule.min, "min", "absolute", rule.action))
            if rule.max is not None and value > rule.max:
                flags.append(Flag(frame_id, rule.name, rule.metric, value, rule.max, "max", "absolute", rule.action))
            if rule.group in ("below", "above"):
                if (rule.name, key) not in limits:
                    limits[(rule.name, key)] = group_limit(rule, [m.get(rule.metric) for m in groups[key]])
                limit = limits[(rule.name, key)]
                if limit is None:
                    continue
                if rule.group == "below" and value < limit:
                    flags.append(Flag(frame_id, rule.name, rule.metric, value, limit, "min", "group", rule.action))
                elif rule.group == "above" and value > limit:
                    flags.append(Flag(frame_id, rule.name, rule.metric, value, limit, "max", "group", rule.action))
    return flags
