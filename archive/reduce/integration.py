"""Integration of raw lights, accepted against total: the one computation behind the night
report's and the web view's integration tables (:mod:`archive.reports.night`,
:mod:`archive.reports.integration`) and a project's usable hours
(:func:`archive.gather.projects.project_status`). What is rejected is the frame's verdict
(:func:`archive.reduce.quality.verdicts`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any


def integrate(
    lights: Iterable[Any],
    rejected: Collection[int],
    key: Callable[[Any], tuple] = lambda light: (),
) -> dict[tuple, dict[str, Any]]:
    """Sum the lights' exposure per group, accepted against total.

    Parameters
    ----------
    lights : iterable
        One per exposure (the caller leaves duplicate exposures out); each with ``id`` and
        ``exposure_time_s`` attributes (a :class:`~archive.db.models.Frame` or a result row).
    rejected : collection of int
        The ids of the lights whose verdict is 'rejected' (:func:`rejected_ids`); every other
        light counts as accepted.
    key : callable, optional
        A light -> its group (a tuple); default one group, ``()``.

    Returns
    -------
    dict
        Group -> ``{'frames', 'exposure_s', 'accepted', 'accepted_s', 'rejected'}``: lights,
        their exposure (s), those not rejected and their exposure (s), those rejected, in the
        order the groups were first met. A light without EXPTIME adds nothing to the times.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for light in lights:
        group = groups.get(k := key(light))
        if group is None:
            group = groups[k] = {
                "frames": 0,
                "exposure_s": 0.0,
                "accepted": 0,
                "accepted_s": 0.0,
                "rejected": 0,
            }
        exposure = light.exposure_time_s or 0.0
        group["frames"] += 1
        group["exposure_s"] += exposure
        if light.id in rejected:
            group["rejected"] += 1
        else:
            group["accepted"] += 1
            group["accepted_s"] += exposure
    return groups


def rejected_ids(judged: Mapping[int, Mapping[str, Any]]) -> set[int]:
    """The ids whose verdict is 'rejected', of a :func:`archive.reduce.quality.verdicts` result."""
    return {i for i, v in judged.items() if v["verdict"] == "rejected"}
