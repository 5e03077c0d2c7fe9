"""Watch mode: keep the archive up to date during the night, one sequence at a time.

``archive watch ROOT`` waits for FITS files under the imaging root (watchdog's native
observer — inotify, FSEvents, ReadDirectoryChangesW — or, with ``poll``, its
``PollingObserver``, for network shares where no change events arrive) and follows every FITS
file it hears of by size and mtime. A folder's *sequence* is complete when no file under it
(sub-folders included) is new or has changed size or mtime for ``settle_s`` seconds; the folder
is then run through the nightly chain (:func:`archive.workflows.night.run_night` with that
folder: ingest, plate-solve, build the masters it can, measure, reduce, and what else the
nightly loop does), and one line per sequence is logged.

Safety, after the pipelines that wait for data (Euclid's, LCO's BANZAI):

- A file whose size or mtime changed within the settle window is never ingested: every file of
  the folder is looked at again just before the folder is processed, and a change puts the
  folder back to waiting.
- The watcher goes on past a missing root (it says so once and waits for it to come back), a
  folder it may not read (said once), a bad file (ingest records it as a problem) and a failing
  sequence (logged; the next sequence goes on).
- :meth:`Watcher.stop` (the command line calls it on SIGINT and SIGTERM) ends the watch after
  the current step of the nightly chain (:func:`~archive.workflows.night.run_night`'s
  ``should_stop``).
- A restart loses nothing and does nothing twice: on start (and whenever the root comes back)
  the root is walked and every file an ingest would read (:func:`archive.ingest.catalogue.to_read`:
  not catalogued with its size and mtime, not a known bad file) makes its folder a sequence
  again; and a folder whose chain was stopped half-way is kept in a small journal beside the
  products (``<products>/.watch/<hash of ROOT>.json``, written to a temporary name and renamed)
  until its chain has run to the end.
- Lights left uncalibrated for lack of a required master (the calibrations came later, or
  in another folder) are kept in the same journal with the master library as it was then
  (:func:`archive.calib.library.library_state`); when the library changes (a later sequence
  built a master, one was added by hand), their folder is a sequence again, so they are
  calibrated without a restart or a manual ``archive reduce``; a restart keeps them waiting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from archive.calib.library import default_library, library_state
from archive.calib.rules import RuleBook
from archive.config import Settings, load_settings
from archive.db.session import session_scope
from archive.files import fsync_dir, temporary_path
from archive.ingest.catalogue import to_read
from archive.ingest.scan import is_fits_name, scan_paths
from archive.progress import Progress
from archive.reduce.config import ReductionConfig, load_reduction_config
from archive.workflows.night import NightSummary, run_night

log = logging.getLogger(__name__)

#: Seconds between two looks at the files being followed (at most; a change event wakes it).
TICK_S = 1.0
#: Seconds between two looks for a missing root.
ROOT_RETRY_S = 5.0


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # clock time the size or mtime was last seen to change


class SequenceTracker:
    """Which folders hold a complete sequence: FITS files followed by size and mtime.

    A file is *pending* from the moment it is seen new or changed until it is processed with
    the size and mtime it had when its folder was checked. A folder is *settled* when every
    pending file under it (sub-folders included) has kept its size and mtime for ``settle_s``
    seconds.

    Parameters
    ----------
    settle_s : float
        Seconds without a new or growing file after which a sequence counts as complete.
    clock : callable
        Seconds (monotonic; default :func:`time.monotonic`).
    """

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic):
        self.settle_s = float(settle_s)
        self.clock = clock
        self.pending: dict[str, _Seen] = {}
        self.done: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) processed or catalogued
        self.forced: dict[str, float] = {}  # folder -> since when (a chain stopped half-way)

    def see(self, path: str, size: int, mtime_ns: int) -> bool:
        """Record what ``stat`` says of ``path``; True when it is new or changed (pending)."""
        now = self.clock()
        seen = self.pending.get(path)
        if seen is not None:
            if (seen.size, seen.mtime_ns) != (size, mtime_ns):
                self.pending[path] = _Seen(size, mtime_ns, now)
            return True
        if self.done.get(path) == (size, mtime_ns):
            return False
        self.pending[path] = _Seen(size, mtime_ns, now)
        return True

    def known(self, path: str, size: int, mtime_ns: int) -> None:
        """Record ``path`` as already catalogued with this size and mtime (not pending)."""
        self.done[path] = (size, mtime_ns)

    def gone(self, path: str) -> None:
        """``path`` no longer exists."""
        self.pending.pop(path, None)
        self.done.pop(path, None)

    def force(self, folder: str) -> None:
        """Make ``folder`` a sequence to process once settled, pending files or not."""
        self.forced.setdefault(folder, self.clock())

    def folders(self) -> list[str]:
        """The folders with pending files, and the forced ones, ancestors first."""
        found = {os.path.dirname(p) for p in self.pending} | set(self.forced)
        return sorted(found, key=lambda f: (f.count(os.sep), f))

    def under(self, folder: str) -> dict[str, _Seen]:
        """The pending files under ``folder`` (sub-folders included)."""
        prefix = folder.rstrip(os.sep) + os.sep
        return {p: s for p, s in self.pending.items() if p.startswith(prefix)}

    def settled(self, folder: str) -> bool:
        """Whether nothing under ``folder`` is new or has changed for ``settle_s`` seconds."""
        now = self.clock()
        times = [s.changed_at for s in self.under(folder).values()]
        if folder in self.forced:
            times.append(self.forced[folder])
        return bool(times) and now - max(times) >= self.settle_s

    def processed(self, folder: str, snapshot: dict[str, tuple[int, int]]) -> None:
        """``folder`` was processed with the files of ``snapshot`` (path -> size, mtime) as they
        were: those still unchanged stop being pending."""
        for path, state in snapshot.items():
            seen = self.pending.get(path)
            if seen is not None and (seen.size, seen.mtime_ns) == state:
                del self.pending[path]
                self.done[path] = state
        self.forced.pop(folder, None)
        prefix = folder.rstrip(os.sep) + os.sep
        for other in [f for f in self.forced if f.startswith(prefix)]:
            del self.forced[other]


@dataclass
class SequenceResult:
    """One sequence processed: its folder, what the chain did, how long it took."""

    folder: str
    night: NightSummary | None
    seconds: float
    files: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The chain ran without a failure (and was not stopped half-way)."""
        return self.error is None and self.night is not None and self.night.ok and not self.night.stopped_before

    def line(self) -> str:
        """The one log line of this sequence."""
        if self.error is not None:
            return f"{self.folder}: FAILED: {self.error} ({self.seconds:.1f} s)"
        n = self.night
        folders = n.folders
        new = sum(f.ingested_new for f in folders)
        masters = sum(f.masters_built for f in folders)
        lights = sum(f.lights for f in folders)
        cal = sum(len(f.reduction.calibrated) for f in folders)
        reg = sum(len(f.reduction.registered) for f in folders)
        stacked = sum(len(f.reduction.stacked) for f in folders)
        failures = [what for f in folders for what, _ in f.failures] + [
            what for f in folders for what, _ in f.reduction.failures]
        status = "stopped before " + n.stopped_before if n.stopped_before else ("ok" if n.ok else "FAILED")
        text = (f"{self.folder}: {status}: {self.files} file(s) settled, {new} new, {masters} master(s) built, "
                f"{lights} light(s), {cal} calibrated, {reg} registered, {stacked} stacked ({self.seconds:.1f} s)")
        if failures:
            text += f"; failed: {', '.join(failures[:3])}" + (f" and {len(failures) - 3} more" if len(failures) > 3 else "")
        return text


@dataclass
class WatchSummary:
    """What a watch did until it was stopped."""

    sequences: list[SequenceResult] = field(default_factory=list)
    stopped: bool = False

    def line(self) -> str:
        """The summary line printed when the watch ends."""
        failed = sum(not s.ok for s in self.sequences)
        files = sum(s.files for s in self.sequences)
        return f"watch stopped: {len(self.sequences)} sequence(s) processed ({files} file(s)), {failed} with failures"


class _Events:
    """watchdog's handler: remembers the paths it hears of and wakes the loop."""

    def __init__(self, wake: threading.Event):
        self.lock = threading.Lock()
        self.paths: set[str] = set()
        self.folders: set[str] = set()
        self.wake = wake

    def dispatch(self, event) -> None:  # watchdog calls this for every event
        if event.is_directory and event.event_type not in ("created", "moved"):
            return  # a folder's own modification says nothing its files' events do not
        if event.event_type in ("opened", "closed_no_write"):
            return  # read, not written (ingest itself reads the files)
        with self.lock:
            for name in (event.src_path, getattr(event, "dest_path", "")):
                if name:
                    (self.folders if event.is_directory else self.paths).add(os.fsdecode(name))
        self.wake.set()

    def take(self) -> tuple[set[str], set[str]]:
        with self.lock:
            paths, folders, self.paths, self.folders = self.paths, self.folders, set(), set()
        return paths, folders


class Watcher:
    """Follow ``root`` and run each settled folder through the nightly chain.

    Parameters
    ----------
    engine : Engine
        The catalogue.
    root : Path
        The imaging root (walked recursively; hidden files and folders, the products folder and
        the master library are left out).
    settle_s : float
        Seconds without a new or growing file after which a folder's sequence is complete.
    poll : bool
        Use watchdog's ``PollingObserver`` (network shares) instead of the native observer.
    config, settings, executor, rules, progress, measure
        Passed to :func:`archive.workflows.night.run_night`.
    report : callable, optional
        Called with each line to show (one per sequence, and the notices); default the log.
    tick_s : float
        Seconds between two looks at the followed files (default :data:`TICK_S`).
    """

    def __init__(self, engine: Engine, root: Path, *, settle_s: float = 30.0, poll: bool = False,
                 config: ReductionConfig | None = None, settings: Settings | None = None,
                 executor: Executor | None = None, rules: RuleBook | None = None, progress: Progress | None = None,
                 measure: bool = True, report: Callable[[str], None] | None = None, tick_s: float = TICK_S):
        self.engine = engine
        self.root = Path(root).expanduser().absolute()
        self.settings = settings or load_settings()
        self.config = config or load_reduction_config(self.settings)
        self.poll = poll
        self.executor, self.rules, self.progress, self.measure = executor, rules, progress, measure
        self.report = report or log.info
        self.tick_s = min(tick_s, max(settle_s / 4, 0.05))
        self.tracker = SequenceTracker(settle_s)
        self.summary = WatchSummary()
        self.excluded = [self.config.products_root().absolute(), default_library(self.settings).expanduser().absolute()]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._events = _Events(self._wake)
        self._observer = None
        self._said: set[str] = set()  # notices said once
        self._waiting: dict | None = None  # the journal's lights waiting for masters (read on first look)
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.journal = self.config.products_root().absolute() / ".watch" / f"{key}.json"

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the current step (safe to call from a signal handler)."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, max_sequences: int | None = None) -> WatchSummary:
        """Watch until stopped (or until ``max_sequences`` sequences were processed).

        Returns
        -------
        WatchSummary
            The sequences processed; ``stopped`` is True.
        """
        try:
            while not self.stopping:
                if not self._root_ready():
                    self._wake.wait(ROOT_RETRY_S)
                    self._wake.clear()
                    continue
                self._take_events()
                self._restat_pending()
                self._retry_waiting()
                for folder in self.tracker.folders():
                    if self.stopping:
                        break
                    if self.tracker.settled(folder) and self._still_settled(folder):
                        self._process(folder)
                        if max_sequences is not None and len(self.summary.sequences) >= max_sequences:
                            self._stop.set()
                self._wake.wait(self.tick_s)
                self._wake.clear()
        finally:
            self._stop_observer()
        self.summary.stopped = True
        return self.summary

    def _say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.report(text)

    def _root_ready(self) -> bool:
        """Whether the root is there and observed; when it (re)appears, walk it (start-up scan)."""
        if not self.root.is_dir():
            if self._observer is not None:
                self._stop_observer()
            self._said.discard("root back")
            self._say_once("root missing", f"{self.root}: no such folder (yet); waiting for it, "
                                           f"looking again every {ROOT_RETRY_S:g} s")
            return False
        if self._observer is None:
            if "root missing" in self._said:
                self._said.discard("root missing")
                self.report(f"{self.root}: there now; watching")
            try:
                self._start_observer()
            except OSError as exc:
                self._say_once(f"observe {exc}", f"{self.root}: cannot watch ({exc.strerror or exc}); "
                                                 f"looking again every {ROOT_RETRY_S:g} s")
                return False
            self._scan(str(self.root), startup=True)
        return True

    def _start_observer(self) -> None:
        if self.poll:
            from watchdog.observers.polling import PollingObserver as Observer
        else:
            from watchdog.observers import Observer
        observer = Observer(timeout=self.tick_s) if self.poll else Observer()
        observer.schedule(self._events, str(self.root), recursive=True)
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:  # noqa: BLE001 - an observer whose folder vanished may fail to stop
                log.debug("stopping the observer failed", exc_info=True)
            self._observer = None

    def _excluded(self, path: str) -> bool:
        p = Path(path)
        if p.is_relative_to(self.root) and any(part.startswith(".") for part in p.relative_to(self.root).parts):
            return True
        return any(p == e or p.is_relative_to(e) for e in self.excluded)

    def _scan(self, folder: str, startup: bool = False) -> None:
        """Walk ``folder``: files an ingest would read become pending; the others are known.
        On start-up, also the folders of the journal (chains stopped half-way)."""
        try:
            scan = scan_paths([folder])
        except FileNotFoundError:
            return
        for path, reason in scan.failures:
            self._say_once(f"scan {path}", f"{path}: {reason}; left out")
        candidates = [c for c in scan.candidates if not self._excluded(c.path)]
        try:
            with session_scope(self.engine) as session:
                unread = {c.path for c in to_read(session, candidates)}
        except Exception as exc:  # noqa: BLE001 - the catalogue is away: follow everything; ingest decides
            self._say_once(f"catalogue {type(exc).__name__}", f"cannot read the catalogue ({exc}); following all files")
            unread = {c.path for c in candidates}
        for c in candidates:
            if c.path in unread:
                self.tracker.see(c.path, c.size, c.mtime_ns)
            else:
                self.tracker.known(c.path, c.size, c.mtime_ns)
        if startup:
            for journalled in self._journal_read():
                self.tracker.force(journalled)

    def _take_events(self) -> None:
        paths, folders = self._events.take()
        for folder in folders:  # a folder created or moved in: walk it
            if os.path.isdir(folder) and not self._excluded(folder):
                self._scan(folder)
        for path in paths:
            if is_fits_name(os.path.basename(path)) and not self._excluded(path):
                self._stat(path)

    def _stat(self, path: str) -> None:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self.tracker.gone(path)
            return
        except OSError as exc:
            self._say_once(f"stat {path}", f"{path}: cannot read ({exc.strerror}); left out")
            return
        self.tracker.see(path, stat.st_size, stat.st_mtime_ns)

    def _restat_pending(self) -> None:
        """Look again at every pending file: a growing file may send no event (network shares)."""
        for path in list(self.tracker.pending):
            self._stat(path)

    def _still_settled(self, folder: str) -> bool:
        """Look at the folder's files once more just before processing (new files included)."""
        if os.path.isdir(folder):
            self._scan(folder)
        self._restat_pending()
        return self.tracker.settled(folder)

    # -- one sequence -----------------------------------------------------------------------------

    def _process(self, folder: str) -> None:
        snapshot = {p: (s.size, s.mtime_ns) for p, s in self.tracker.under(folder).items()}
        if not os.path.isdir(folder):  # gone meanwhile (moved away, deleted)
            self.tracker.processed(folder, snapshot)
            self._journal_update(remove=folder)
            return
        self._journal_update(add=folder)
        started = time.monotonic()
        try:
            night = run_night(self.engine, config=self.config, settings=self.settings, executor=self.executor,
                              rules=self.rules, progress=self.progress, measure=self.measure,
                              folders=[Path(folder)], should_stop=lambda: self.stopping)
            result = SequenceResult(folder, night, time.monotonic() - started, len(snapshot))
        except Exception as exc:  # noqa: BLE001 - one sequence's failure is logged; the watch goes on
            log.exception("processing %s failed", folder)
            result = SequenceResult(folder, None, time.monotonic() - started, len(snapshot),
                                    error=f"{type(exc).__name__}: {exc}")
        self.summary.sequences.append(result)
        self.report(result.line())
        if result.night is not None and result.night.stopped_before:
            return  # stays in the journal: the next start completes the chain
        if result.night is not None:
            self._record_waiting(folder, result.night)
        self.tracker.processed(folder, snapshot)
        self._journal_update(remove=folder)

    # -- the journal of chains stopped half-way ---------------------------------------------------

    def _journal_load(self) -> dict:
        """The journal: ``folders`` (chains stopped half-way) and ``waiting`` (folder ->
        ``{'lights': [ids], 'library': [count, newest]}``: lights left uncalibrated for lack of
        a master, and the library as it was then, :func:`archive.calib.library.library_state`)."""
        try:
            data = json.loads(self.journal.read_text())
            folders = [str(f) for f in data.get("folders", [])]
            waiting = {str(k): {"lights": [int(i) for i in v["lights"]], "library": [int(x) for x in v["library"]]}
                       for k, v in (data.get("waiting") or {}).items()}
            return {"folders": folders, "waiting": waiting}
        except FileNotFoundError:
            return {"folders": [], "waiting": {}}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._say_once("journal", f"{self.journal}: unreadable ({exc}); ignored")
            return {"folders": [], "waiting": {}}

    def _journal_read(self) -> list[str]:
        return self._journal_load()["folders"]

    def _journal_update(self, add: str | None = None, remove: str | None = None,
                        waiting: tuple[str, dict | None] | None = None) -> None:
        """Add or remove a folder of a chain stopped half-way; set (or, with None, clear) the
        lights of a folder waiting for masters (``waiting``: (folder, entry))."""
        data = self._journal_load()
        folders = data["folders"]
        if add is not None and add not in folders:
            folders.append(add)
        if remove is not None:
            folders = [f for f in folders if f != remove]
        if waiting is not None:
            folder, entry = waiting
            if entry is None:
                data["waiting"].pop(folder, None)
            else:
                data["waiting"][folder] = entry
        try:
            if not folders and not data["waiting"]:
                self.journal.unlink(missing_ok=True)
                return
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(self.journal)
            tmp.write_text(json.dumps({"root": str(self.root), "folders": folders, "waiting": data["waiting"]},
                                      indent=1))
            os.replace(tmp, self.journal)
            fsync_dir(self.journal.parent)
        except OSError as exc:
            self._say_once("journal write", f"{self.journal}: cannot write ({exc.strerror}); a chain stopped "
                                            "half-way, or lights waiting for masters, will not be taken up after "
                                            "a restart")

    # -- lights waiting for masters ---------------------------------------------------------------

    def _library_state(self) -> tuple[int, int] | None:
        try:
            with session_scope(self.engine) as session:
                return library_state(session)
        except Exception as exc:  # noqa: BLE001 - the catalogue is away: try again at the next look
            self._say_once(f"library {type(exc).__name__}", f"cannot read the master library ({exc}); "
                                                            "lights waiting for masters are tried later")
            return None

    def _retry_waiting(self) -> None:
        """Make a sequence again of each folder whose lights lacked a master when the master
        library has changed since (a master built from a later sequence, or added by hand)."""
        waiting = self._journal_load()["waiting"] if self._waiting is None else self._waiting
        self._waiting = waiting
        if not waiting:
            return
        state = self._library_state()
        if state is None:
            return
        retry = [folder for folder, entry in waiting.items()
                 if list(state) != entry["library"] and folder not in self.tracker.forced and os.path.isdir(folder)]
        for folder in retry:
            self.report(f"{folder}: {len(waiting[folder]['lights'])} light(s) waiting for masters; the master "
                        "library changed: trying them again")
            self.tracker.force(folder)
            # once per change of the library: a run that breaks (and so records nothing) is not
            # tried again at every look, only when the library changes again
            waiting[folder]["library"] = list(state)
            self._journal_update(waiting=(folder, waiting[folder]))

    def _record_waiting(self, folder: str, night: NightSummary) -> None:
        """Keep (or clear) in the journal the lights of ``folder`` left uncalibrated for lack of a master."""
        lights = sorted({i for f in night.folders for i in f.reduction.waiting})
        if not lights:
            if folder in self._journal_load()["waiting"]:
                self._journal_update(waiting=(folder, None))
        else:
            state = self._library_state()
            if state is None:
                return
            self._journal_update(waiting=(folder, {"lights": lights, "library": list(state)}))
        self._waiting = self._journal_load()["waiting"]


def watch(engine: Engine, root: Path, *, settle_s: float = 30.0, poll: bool = False,
          stop: threading.Event | None = None, **kwargs) -> WatchSummary:
    """Watch ``root`` until ``stop`` is set (see :class:`Watcher` for the parameters).

    Returns
    -------
    WatchSummary
    """
    watcher = Watcher(engine, root, settle_s=settle_s, poll=poll, **kwargs)
    if stop is not None:
        def relay() -> None:
            stop.wait()
            watcher.stop()

        threading.Thread(target=relay, name="watch-stop", daemon=True).start()
    return watcher.run()


__all__: Sequence[str] = ("SequenceTracker", "SequenceResult", "WatchSummary", "Watcher", "watch")
