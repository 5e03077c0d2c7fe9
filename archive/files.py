"""Safe file handling shared by every step that writes: checksums, temporary names,
clean-up after interrupted writers, and paths built from header values.

The rules (``shared/DESIGN.md``, "Safety"): outputs go to a temporary name in the target
folder and are renamed into place; a temporary file carries its writer's process id so that
the next run removes only those whose writer is gone; paths built from header values are
sanitized and checked to stay below their root.
"""

from __future__ import annotations

import hashlib
import os
import multiprocessing
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from archive.errors import UnsafePathError

#: FITS file endings, longest first, lower case.
FITS_ENDINGS = (".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fit.fz", ".fits", ".fit", ".fts", ".fz")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_DOTS = re.compile(r"\.{2,}")
_MAX_COMPONENT = 100
#: Temporary names: ``.NAME.PID.RANDOM.part`` beside the final file.
_PARTIAL = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.part$")


#: Prefix of a stored path that is not valid UTF-8 (:func:`path_to_text`).
UNDECODABLE_PREFIX = "fsencoded:"
_ESCAPED_BYTE = re.compile(r"\\x([0-9a-f]{2})")


def path_to_text(path: str) -> str:
    """The text a database stores for a file path: lossless, valid UTF-8, no NUL.

    Python gives a file name whose bytes are not UTF-8 as a str with lone surrogates
    (:func:`os.fsdecode`, PEP 383); neither SQLite's nor PostgreSQL's driver can store those.
    Such a path is stored as ``fsencoded:`` followed by its bytes, each byte that is not
    printable ASCII (and the backslash) written ``\\xHH``: ``/night/caf\\xe9.fits``. Every other
    path is stored unchanged (paths are stored absolute, so none begins with the prefix; one
    that does is escaped too, so that the mapping stays one-to-one).
    :func:`path_from_text` reverses it.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if not path.startswith(UNDECODABLE_PREFIX):
            return path
    raw = os.fsencode(path)
    return UNDECODABLE_PREFIX + "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def path_from_text(text: str) -> str:
    """The file path (a str for :func:`open`, with surrogates where its bytes are not UTF-8)
    that :func:`path_to_text` stored as ``text``."""
    if not text.startswith(UNDECODABLE_PREFIX):
        return text
    raw = _ESCAPED_BYTE.sub(lambda m: chr(int(m.group(1), 16)), text[len(UNDECODABLE_PREFIX):])
    return os.fsdecode(raw.encode("latin-1"))


def printable_path(path: str) -> str:
    """``path`` for messages and terminals: bytes that are not UTF-8 as ``\\xHH``."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class HashingReader:
    """A binary file object that hashes (SHA-256) every byte read through it.

    Handed to a decompressor (:class:`gzip.GzipFile`), it gives the hash of the compressed
    file in the same pass that decompresses it; :meth:`drain` hashes what the reader left.
    """

    def __init__(self, raw):
        self._raw = raw
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Hash the rest of the file."""
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        """Hex SHA-256 of the bytes read so far."""
        return self._digest.hexdigest()


def fits_ending(path: str | Path) -> str:
    """The FITS ending of a file name (``.fits``, ``.fits.gz``, ``.fz``, ...), lower case;
    ``.fits`` when the name has none."""
    lower = str(path).lower()
    return next((ending for ending in FITS_ENDINGS if lower.endswith(ending)), ".fits")


def fits_stem(path: str | Path) -> str:
    """The file name without its FITS ending (``a.b.fits.gz`` -> ``a.b``)."""
    name = Path(path).name
    ending = fits_ending(name)
    return name[: -len(ending)] if name.lower().endswith(ending) else Path(name).stem


def temporary_path(path: str | Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so the final rename is atomic),
    carrying this process's id for :func:`remove_partials`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie (killed, not yet reaped by its parent,
    as happens to pool workers of a killed run) counts as gone: it writes nothing more."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (not Linux): ask the kernel directly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def exit_with_parent() -> None:
    """Make this process (a pool worker) exit when the process that started it is gone.

    A worker of a :class:`~concurrent.futures.ProcessPoolExecutor` whose parent was killed
    (SIGKILL, a crash) would otherwise wait for its next task for ever: it holds a copy of the
    task queue's write end itself, so the queue never ends. A daemon thread waits on
    :func:`multiprocessing.parent_process` and ends the process (``os._exit``, as the pool's
    own workers end) when the parent is gone. Call it from the pool's initializer; in a
    process not started by :mod:`multiprocessing` it does nothing.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def remove_partials(folder: str | Path) -> int:
    """Delete the temporary files (:func:`temporary_path`) of interrupted writers under
    ``folder``; returns how many. Files of a writer that still runs are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for tmp in folder.rglob(".*.part"):
        match = _PARTIAL.match(tmp.name)
        if match and tmp.is_file() and not process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            count += 1
    return count


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or link in ``folder`` durable (best effort where folders cannot be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_component(value: Any, missing: str = "unknown") -> str:
    """Make one header value safe as (part of) a path component.

    Every run of characters other than ASCII letters, digits, ``.``, ``_``, ``+`` and ``-``
    (separators, blanks, control characters, ``:``) becomes ``_``; runs of dots become one dot;
    leading and trailing dots, blanks and underscores go; the result is at most 100 characters.
    An empty result is ``missing``. So ``'../../etc'`` gives ``'etc'`` and ``'a/b'`` ``'a_b'``.
    """
    if value is None:
        return missing
    text = _DOTS.sub(".", _UNSAFE.sub("_", str(value)))
    text = text.strip("._ -")[:_MAX_COMPONENT].strip("._ -")
    return text or missing


def render_path(root: str | Path, template: str, **fields: Any) -> Path:
    """``root / template.format(**fields)``, checked to stay below ``root``.

    ``fields`` should already be :func:`safe_component` values; the template's own separators
    make the folders.

    Raises
    ------
    UnsafePathError
        The template is absolute, has empty, ``.`` or ``..`` parts, or the path leaves ``root``.
    KeyError
        The template names a field that is not given.
    """
    root = Path(root)
    relative = template.format(**fields)
    parts = re.split(r"[/\\]", relative)
    if any(p in ("", ".", "..") for p in parts) or relative.startswith(("/", "\\")):
        raise UnsafePathError(f"path {relative!r} (template {template!r}) is not a plain relative path")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(f"path {path} leaves {root}")
    return path
