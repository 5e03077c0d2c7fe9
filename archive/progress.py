"""A small progress hook: library loops report progress through it, the CLI shows a bar."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What a long library loop calls; the CLI connects it to a tqdm bar."""

    def start(self, total: int, description: str) -> None:
        """A phase of ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps are done."""

    def finish(self) -> None:
        """The phase is over."""


class NoProgress:
    """The silent default."""

    def start(self, total: int, description: str) -> None:  # noqa: D102
        pass

    def advance(self, steps: int = 1) -> None:  # noqa: D102
        pass

    def finish(self) -> None:  # noqa: D102
        pass
