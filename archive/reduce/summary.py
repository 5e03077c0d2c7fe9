"""What a reduction run did: products, failures and warnings, per group."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from archive.db.models import Frame


@dataclass
class ReduceSummary:
    """What a reduction run did.

    Attributes
    ----------
    calibrated, registered, stacked : list of str
        Products written (paths).
    unchanged : int
        Requests whose fingerprint already had a finished reduction (or a deterministic
        alignment failure), or that another live run is making.
    failures : list of (str, str)
        (what, reason): a step that broke (a light without a required master, an unreadable
        file, an error); the run's exit status is 1.
    rejected : list of (str, str)
        (what, reason): frames judged unusable (one that cannot be aligned, a light rejected
        by its quality verdict), left out of the stack; normal (exit status 0), and listed.
    warnings : list of str
        Large shifts, missing master kinds, stack cards left out.
    waiting : list of int
        Lights not calibrated for lack of a required master (among ``failures``): they can
        be once one arrives (``archive watch`` tries them again when the library changes).
    by_group : dict
        "target / filter" -> counts of calibrated, registered, stacked, failed.
    """

    calibrated: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    stacked: list[str] = field(default_factory=list)
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    by_group: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def ok(self) -> bool:
        """Nothing failed (rejected frames are no failure)."""
        return not self.failures

    def merge(self, other: ReduceSummary) -> None:
        """Add ``other``'s counts to these."""
        self.calibrated += other.calibrated
        self.registered += other.registered
        self.stacked += other.stacked
        self.unchanged += other.unchanged
        self.failures += other.failures
        self.rejected += other.rejected
        self.warnings += other.warnings
        self.waiting += other.waiting
        for group, counts in other.by_group.items():
            for key, value in counts.items():
                self.by_group[group][key] += value

    def fail(self, group: str, what: str, why: str) -> None:
        """Record one failure of ``group``."""
        self.failures.append((what, why))
        self.by_group[group]["failed"] += 1


    def reject(self, group: str, what: str, why: str) -> None:
        """Record one frame of ``group`` judged unusable."""
        self.rejected.append((what, why))
        self.by_group[group]["rejected"] += 1


def group_name(frame: Frame) -> str:
    return f"{frame.target or '?'} / {frame.filter_name or '?'}"
