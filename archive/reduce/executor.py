"""The executor interface pixel work runs through.

Everything that touches pixels (calibrating a light, detecting stars, warping a frame,
combining a block of rows) is a top-level function of paths and plain parameters returning a
small picklable result, submitted to a :class:`concurrent.futures.Executor`. The database work
stays in the calling process. Any object with ``submit`` and ``map`` in the
``concurrent.futures`` sense will do:

* the default, a :class:`~concurrent.futures.ProcessPoolExecutor` with one worker per core;
* ``serial`` (:class:`SerialExecutor`), for tests and debugging;
* a Dask cluster: ``dask.distributed.Client(address).get_executor()`` returns a
  ``concurrent.futures.Executor`` whose workers run the same functions; the files must then be
  on storage every worker sees (see the README).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from archive.errors import ConfigError
from archive.files import exit_with_parent


class SerialExecutor(Executor):
    """Run each task at once in the calling process (same interface as a pool)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout=None, chunksize: int = 1) -> Iterator:
        return map(fn, *iterables)


def _start_worker(preload: Sequence[str]) -> None:
    """A pool worker's initializer: exit with the parent, then import ``preload``."""
    exit_with_parent()
    for module in preload:
        importlib.import_module(module)


def make_executor(kind: str = "process", workers: int = 0, preload: Sequence[str] = ()) -> Executor:
    """Build the executor named in ``[executor]`` of ``configs/reduction.toml``.

    Parameters
    ----------
    kind : {'process', 'serial'}
        A local process pool, or everything in the calling process.
    workers : int
        Pool size; 0 means one per core (``os.cpu_count()``).
    preload : sequence of str
        Modules each worker of a pool imports as it starts (the heavy ones its tasks need:
        SciPy, SEP, astropy.wcs). With ``preload`` the workers are started at once, so that
        their imports run while the caller is still reading the catalogue, instead of after
        the first task is submitted (a pool starts its workers on the first task).

    Raises
    ------
    ConfigError
        Unknown ``kind``.
    """
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, initializer=_start_worker,
                                   initargs=(tuple(preload),))
        if preload:
            pool.submit(os.getpid)  # starts the workers (all of them, with fork)
        return pool
    raise ConfigError(f"unknown executor kind {kind!r}: use 'process' or 'serial' (or pass a Dask client's executor)")
