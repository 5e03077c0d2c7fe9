"""Walking the folders to ingest: which files are FITS, what their size and mtime are."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from archive.files import FITS_ENDINGS


@dataclass(frozen=True)
class Candidate:
    """A file whose name says FITS, with what ``stat`` said of it.

    ``folders`` are the folder names from the ingested root (inclusive) down to the file.
    """

    path: str
    size: int
    mtime_ns: int
    folders: tuple[str, ...]


@dataclass
class Scan:
    """The result of :func:`scan_paths`."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: int = 0  # files whose name does not say FITS
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def is_fits_name(name: str) -> bool:
    """Whether a file name ends with a FITS ending (:data:`archive.files.FITS_ENDINGS`, any case)."""
    return name.lower().endswith(FITS_ENDINGS)


def scan_paths(paths: Iterable[str | Path]) -> Scan:
    """Find the FITS files under ``paths`` (files or folders, walked recursively).

    Symbolic links to folders are not followed (no loops); hidden files and folders (names
    starting with a dot) are skipped. Paths are made absolute; the result is sorted by path.

    Raises
    ------
    FileNotFoundError
        A given path does not exist.
    """
    scan = Scan()
    for given in paths:
        root = Path(given).expanduser().absolute()
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {given}")
        if root.is_file():
            stat = root.stat()
            scan.candidates.append(Candidate(str(root), stat.st_size, stat.st_mtime_ns, (root.parent.name,)))
            continue
        stack = [(str(root), (root.name,))]
        while stack:
            folder, names = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                scan.failures.append((folder, f"unreadable folder: {exc.strerror}"))
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, names + (entry.name,)))
                    elif not is_fits_name(entry.name):
                        scan.skipped += 1
                    else:
                        stat = entry.stat()
                        scan.candidates.append(Candidate(entry.path, stat.st_size, stat.st_mtime_ns, names))
                except OSError as exc:
                    scan.failures.append((entry.path, f"unreadable: {exc.strerror}"))
    scan.candidates.sort(key=lambda c: c.path)
    seen: set[str] = set()  # the same file named twice (overlapping roots) counts once
    scan.candidates = [c for c in scan.candidates if not (c.path in seen or seen.add(c.path))]
    return scan
