"""Reading and writing batches, in this process or in a pool of worker processes: each batch
read by one worker and written in its turn (the batches of one run in the order of the files),
and a pool that stops within seconds on Ctrl-C with no process left behind.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.util
import os
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine

from archive.config import Settings
from archive.db.bulk import chunked
from archive.db.session import checkpoint, open_catalogue
from archive.files import exit_with_parent
from archive.ingest.catalogue import frame_row, write_with_retry
from archive.ingest.dialects import DialectSet
from archive.ingest.headers import FileRead, read_fits
from archive.ingest.runs import IngestSummary
from archive.ingest.scan import Candidate
from archive.ingest.sky_config import load_sky_config
from archive.progress import Progress

#: Below this many files to read, a process pool costs more than it saves.
POOL_THRESHOLD = 64
#: Batches per worker at least, so that workers stay busy while others write.
_BATCHES_PER_WORKER = 4


class _Stopped(Exception):
    """A batch abandoned because the run is stopping (Ctrl-C in the main process)."""


# -- reading and writing a batch, in worker processes ------------------------------------------

_worker_state: dict = {}


class _WriteTurns:
    """Batches written strictly in their order by the workers of one run.

    So a run writes its batches one at a time and in the order of the files, as one process
    would (which copy of a file found twice becomes canonical does not depend on which worker
    was quicker), and the next batch starts the moment the previous one committed.
    """

    def __init__(self, context):
        self._changed = context.Condition()
        self._next = context.Value("q", 0, lock=False)  # guarded by the condition's lock

    @contextmanager
    def turn(self, number: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._next.value == number)
        try:
            yield
        finally:  # a failed batch passes the turn on too
            with self._changed:
                self._next.value = number + 1
                self._changed.notify_all()


def _init_worker(settings: Settings, dialect_folder: str | None, database: str | None = None,
                 turns: _WriteTurns | None = None, stop=None) -> None:
    _worker_state["dialects"] = DialectSet(Path(dialect_folder) if dialect_folder else None)
    _worker_state["settings"] = settings
    _worker_state["sky"] = load_sky_config(settings)
    _worker_state["turns"] = turns
    _worker_state["stop"] = stop
    if database is not None:  # a pool worker
        # Ctrl-C is the main process's to handle (it sets ``stop``, and the batches handed out
        # end at their next file, passing their turns on); the worker was started with SIGINT
        # blocked (see ingest_paths), so no Ctrl-C can reach it before it ignores it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        exit_with_parent()
        gc.freeze()  # what the worker inherited stays put: later collections do not walk it
        # the main process checkpoints the write-ahead log after each batch (read_and_write)
        engine = open_catalogue(database, busy_timeout_s=settings.sqlite_busy_timeout_s, create=False, autocheckpoint=False)
        multiprocessing.util.Finalize(None, engine.dispose, exitpriority=10)
        _worker_state["engine"] = engine


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (restored after): reading a batch makes many small
    objects and few cycles, and the collector's passes over them cost a quarter of the read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ingest_batch(batch: Sequence[Candidate], run_id: int, number: int, engine: Engine | None = None) -> IngestSummary:
    """Read ``batch`` and write it in one transaction (a worker task); returns its counts."""
    with _without_cyclic_gc():
        return _read_and_write_batch(batch, run_id, number, engine)


def _read_and_write_batch(batch: Sequence[Candidate], run_id: int, number: int, engine: Engine | None) -> IngestSummary:
    settings = _worker_state["settings"]
    stop = _worker_state.get("stop")
    failed: BaseException | None = None
    results = []
    try:
        for c in batch:
            if stop is not None and stop.is_set():
                raise _Stopped()
            results.append(read_fits(c.path, _worker_state["dialects"], folders=c.folders, sites=settings.sites))
        reads = [r for r in results if isinstance(r, FileRead)]
        # the footprints of the frames that get one, before the turn to write (astropy.wcs is
        # loaded for them only: a batch of calibration frames never imports it)
        sky = _worker_state["sky"]
        placeable = [r for r in reads if r.normalized.values["image_type"] in sky.image_types]
        if placeable:
            from archive.ingest.sky import read_footprints

            rows = [frame_row(r, None, run_id, None) for r in placeable]
            for read, footprint in zip(placeable, read_footprints(rows, sky)):
                read.footprint, read.placed = footprint, True
    except BaseException as exc:  # noqa: BLE001 - raised below, after the turn is passed on
        failed = exc
    summary = IngestSummary()
    turns = _worker_state["turns"]
    with turns.turn(number) if turns is not None else nullcontext():
        if failed is not None:
            raise failed
        if stop is not None and stop.is_set():
            raise _Stopped()
        write_with_retry(engine or _worker_state["engine"], results, run_id, summary, _worker_state["sky"])
    return summary


def _shareable(engine: Engine) -> bool:
    """Whether worker processes can open the catalogue too (not an in-memory SQLite one)."""
    return engine.dialect.name != "sqlite" or engine.url.database not in (None, "", ":memory:")


#: Seconds the workers of a stopped run get to end by themselves before they are terminated.
STOP_GRACE_S = 3.0


def read_and_write(engine: Engine, todo: list[Candidate], settings: Settings, dialect_folder: str | None,
                    summary: IngestSummary, progress: Progress) -> None:
    """Read and write ``todo`` in batches: in this process, or by a pool of workers.

    On Ctrl-C (or any error) in the main process the pool stops within
    :data:`STOP_GRACE_S` seconds: the workers are told to stop (each batch ends at its next
    file, a batch being written commits), batches not started are cancelled, and workers
    still running after the grace period are terminated (their open transaction is rolled
    back by the database). No worker outlives the call.
    """
    workers = settings.workers or os.cpu_count() or 1
    if workers <= 1 or len(todo) < POOL_THRESHOLD or not _shareable(engine):
        _init_worker(settings, dialect_folder)
        for number, batch in enumerate(chunked(todo, settings.batch_size)):
            summary.add(_ingest_batch(batch, summary.run_id, number, engine))
            progress.advance(len(batch))
        return
    database = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context()
    stop = context.Event()
    size = max(1, min(settings.batch_size, -(-len(todo) // (workers * _BATCHES_PER_WORKER))))
    batches = list(chunked(todo, size))
    # Ctrl-C is held back while the pool starts and takes its work, so that it never finds a
    # pool half started (workers nobody waits for); the workers inherit the blocked signal.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker,
            initargs=(settings, dialect_folder, database, _WriteTurns(context), stop),
        )
        futures = [pool.submit(_ingest_batch, batch, summary.run_id, number) for number, batch in enumerate(batches)]
        processes = list((pool._processes or {}).values())  # noqa: SLF001 - to end them, below
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a held-back Ctrl-C is raised here
    try:
        for future, batch in zip(futures, batches):
            summary.add(future.result())
            progress.advance(len(batch))
            checkpoint(engine)  # while the workers read and write the next batches
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        _end_processes(processes + [p for p in (pool._processes or {}).values() if p not in processes])  # noqa: SLF001
        raise
    pool.shutdown(wait=True)


def _end_processes(processes: list, grace_s: float = STOP_GRACE_S) -> None:
    """Wait up to ``grace_s`` seconds for ``processes`` to end, then terminate the rest."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
