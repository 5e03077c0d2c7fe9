"""The destination folder of a copyback or a project collect: one writer at a time, and the
recovery of an interrupted one.

* **One run per destination at a time.** A real run holds an exclusive lock on
  ``<dest>/.archive-lock`` (:func:`hold_destination`) from its recovery to its last record, so
  two runs into one folder never plan the same exposures; the second waits for the first (or,
  with a timeout, stops with :class:`archive.errors.DestinationBusyError`).
* **Interrupted runs are finished, not repeated.** A run starts (:func:`recover_destination`)
  by deleting the temporary files of interrupted writers under the destination
  (:func:`archive.files.remove_partials`: only those whose process is gone) and recording the
  destination's files the catalogue does not know yet (a run killed between rename and
  record), so no exposure is copied twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from archive.config import Settings
from archive.errors import DestinationBusyError
from archive.files import remove_partials
from archive.ingest.ingest import ingest_paths

log = logging.getLogger(__name__)

#: The lock file a real run holds in its destination (hidden: ingest skips it).
LOCK_NAME = ".archive-lock"


def recover_destination(engine: Engine, root: Path, *, settings: Settings | None = None) -> tuple[int, int]:
    """Finish what an interrupted run left in ``root`` before planning a new one.

    Deletes the temporary files of writers that are gone (:func:`archive.files.remove_partials`;
    a running writer's file is left alone), then records the files under ``root`` that the
    catalogue does not know yet (a run killed between rename and record) with
    :func:`archive.ingest.ingest_paths`, so that the plan sees them as present. Call it while
    holding :func:`hold_destination`.

    Returns
    -------
    (int, int)
        Temporary files removed; files recorded (new frames, new copies, changed copies).
    """
    if not root.is_dir():
        return 0, 0
    removed = remove_partials(root)
    found = ingest_paths(engine, [root], settings=settings)
    return removed, found.new + found.new_copies + found.changed


def _lock_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def hold_destination(root: Path, *, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of the folder ``root`` (created when needed) while the block runs.

    The lock is an ``fcntl.flock`` on ``root/.archive-lock``, which is kept (deleting a lock
    file races with its next user) and holds the holder's process id. The kernel releases it
    when the holder exits, even when killed. Another holder makes this wait: as long as it
    takes when ``timeout_s`` is None, else at most ``timeout_s`` seconds (0: not at all).

    Raises
    ------
    DestinationBusyError
        The lock was not free within ``timeout_s``.
    """
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            busy = f"another copyback or project collect ({holder}) is writing into {root} (it holds {lock})"
            if timeout_s is not None and timeout_s <= 0:
                raise DestinationBusyError(f"{busy}; try again when it has finished") from None
            log.warning("%s; waiting for it to finish", busy)
            if timeout_s is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout_s
                while True:
                    time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise DestinationBusyError(f"{busy}; waited {timeout_s:g} s") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock
