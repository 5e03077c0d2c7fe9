"""Reading pixels and writing products: float32 FITS, temporary name, then rename."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import numpy as np
from astropy.io import fits

from archive.reduce import keywords as kw


def read_pixels(path: str | Path, hdu: int = 0, dtype=np.float64) -> tuple[np.ndarray, fits.Header]:
    """The image of ``path`` as ``dtype`` in native byte order (BZERO/BSCALE applied) and its
    header; opened read-only."""
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        data = np.asarray(hdul[hdu].data).astype(np.dtype(dtype).newbyteorder("="), copy=False)
        header = hdul[hdu].header.copy()
    return data, header


def product_header(source: fits.Header) -> fits.Header:
    """A copy of ``source`` without the keywords that describe raw pixel storage."""
    header = source.copy()
    for key in kw.DROPPED:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def set_card(header: fits.Header, key: str, value, comment: str = "") -> None:
    """Set ``key``; a long string value is cut to fit one card, the comment kept only if it fits."""
    if isinstance(value, str):
        value = value[:68]
        if len(value) + len(comment) > 45:
            comment = ""
    header[key] = (value, comment) if comment else value


def temporary_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")


def write_atomic(path: str | Path, data: np.ndarray, header: fits.Header) -> Path:
    """Write ``data`` as float32 FITS to ``path`` through a temporary name and a rename.

    A reader never sees a partial file at ``path``: either the previous file (or none) or the
    complete new one. The temporary file of an interrupted write is left as ``.NAME.*.part``
    and removed by :func:`remove_partials`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header)
    try:
        with open(tmp, "wb") as fh:
            hdu.writeto(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


#: Temporary names of interrupted writes, with the writer's process id: ours
#: (``.NAME.PID.RANDOM.part``) and the master library's (``.NAME.tmp-PID``).
_PARTIAL = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.part$|^\..+\.tmp-(\d+)$")


def _alive(pid: int) -> bool:
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


def remove_partials(folder: str | Path) -> int:
    """Delete temporary files left under ``folder`` by interrupted writes; returns how many.

    Only files whose writer process is gone are removed, so a concurrent writer is safe.
    """
    count = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(".*"):
        match = _PARTIAL.match(tmp.name)
        if match and tmp.is_file() and not _alive(int(match.group(1) or match.group(2))):
            tmp.unlink(missing_ok=True)
            count += 1
    return count
