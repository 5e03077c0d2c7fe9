"""Reading one FITS file for the catalogue: checksum, image header, normalized values.

Plain FITS files (the common case) are read once, as a stream: the header blocks are parsed by
astropy's ``Header.fromstring`` and the rest only hashed, so no pixel data is decoded.
Multi-extension, gzip- and tile-compressed files are opened with ``astropy.io.fits`` (lazily)
to find the HDU holding the image. Files are opened read-only and never modified.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astropy.io import fits

from archive.errors import HeaderError
from archive.ingest.dialects import DialectSet, Normalized, normalize_header

BLOCK = 2880  # FITS logical record, bytes (FITS standard 4.0, sec. 3.1)
CARD = 80
_END = b"END" + b" " * 77
_CHUNK = 1 << 20


@dataclass
class FileRead:
    """What ingest needs of one readable FITS file.

    ``header`` (and ``primary_header`` for an image in an extension) are the cards joined by
    newlines, trailing blanks, blank cards and END left out; ``naxis`` is (NAXIS1, NAXIS2,
    NAXIS3) with None for absent axes.
    """

    path: str
    size: int
    mtime_ns: int
    sha256: str
    header: str
    primary_header: str | None
    hdu_index: int
    naxis: tuple[int | None, int | None, int | None]
    bitpix: int | None
    normalized: Normalized


@dataclass
class ReadFailure:
    """A file that could not be ingested, with a one-line reason."""

    path: str
    size: int | None
    mtime_ns: int | None
    reason: str


class HeaderView(Mapping):
    """A read-only view of an astropy header that answers absent keywords without a lookup.

    Header normalization tries many alias keywords that are absent; checking a set of the
    present keywords first keeps that cheap.
    """

    def __init__(self, header: fits.Header):
        self._header = header
        self._present = {k.upper() for k in header.keys()}

    def get(self, key: str, default: Any = None) -> Any:
        key = key.upper()
        if key not in self._present and f"HIERARCH {key}" not in self._present:
            return default
        return self._header.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._header[key]

    def __iter__(self):
        return iter(self._header.keys())

    def __len__(self) -> int:
        return len(self._header)


def cards_text(header_text: str) -> str:
    """80-character cards as lines, trailing blanks, blank cards and END left out."""
    lines = (header_text[i : i + CARD].rstrip() for i in range(0, len(header_text), CARD))
    return "\n".join(line for line in lines if line and line != "END")


def header_from_text(text: str) -> fits.Header:
    """Rebuild an astropy Header from the text stored in the catalogue."""
    return fits.Header.fromstring(text, sep="\n")


def _shape(header: Mapping) -> tuple[tuple[int | None, int | None, int | None], int | None]:
    axes = tuple(header.get(f"NAXIS{i}") for i in (1, 2, 3))
    return axes, header.get("BITPIX")  # type: ignore[return-value]


def _data_bytes(header: Mapping) -> int:
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        return 0
    count = math.prod(int(header.get(f"NAXIS{i}", 0) or 0) for i in range(1, naxis + 1))
    pcount, gcount = int(header.get("PCOUNT", 0) or 0), int(header.get("GCOUNT", 1) or 1)
    return abs(int(header.get("BITPIX", 8))) // 8 * gcount * (pcount + count)


def _has_image(header: Mapping) -> bool:
    naxis = int(header.get("NAXIS", 0) or 0)
    return naxis > 0 and all(int(header.get(f"NAXIS{i}", 0) or 0) > 0 for i in range(1, naxis + 1))


def _read_plain(fh, size: int) -> tuple[bytes, str]:
    """Read the primary header blocks and hash the whole file; returns (header bytes, sha256)."""
    digest = hashlib.sha256()
    first = fh.read(BLOCK)
    if not first.startswith(b"SIMPLE  ="):
        raise HeaderError("not a FITS file: it does not begin with a SIMPLE card")
    blocks = [first]
    while True:
        block = blocks[-1]
        if any(block[i : i + CARD] == _END for i in range(0, len(block), CARD)):
            break
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise HeaderError(f"truncated: the header has no END card within the file's {size} bytes")
        blocks.append(block)
    raw = b"".join(blocks)
    digest.update(raw)
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return raw, digest.hexdigest()


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_with_astropy(path: str) -> tuple[fits.Header, fits.Header | None, int]:
    """(image header, primary header if the image is in an extension, HDU index)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=True) as hdul:
            found = None
            for index, hdu in enumerate(hdul):
                if _has_image(hdu.header):
                    found = (hdu.header.copy(), hdul[0].header.copy() if index else None, index)
                    break
    truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
    if truncated:
        raise HeaderError(f"truncated: {truncated[0]}")
    if found is None:
        raise HeaderError("no image: no HDU of the file has a data array")
    return found


def read_fits(
    path: str,
    dialects: DialectSet,
    *,
    folders: tuple[str, ...] = (),
    sites: Mapping[str, float] | None = None,
) -> FileRead | ReadFailure:
    """Read one file for the catalogue; never raises for a bad file.

    Parameters
    ----------
    path : str
        The file (any FITS form: plain, multi-extension, ``.gz``, tile-compressed ``.fz``).
    dialects : DialectSet
        Keyword dialects for :func:`archive.ingest.dialects.normalize_header`.
    folders : tuple of str
        Folder names from the ingested root down to the file (image-type words).
    sites : mapping, optional
        Configured site longitude per instrument.

    Returns
    -------
    FileRead or ReadFailure
        The record to ingest, or the path with a one-line reason (empty, not FITS, truncated,
        unreadable, unparseable header, no image).
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        return ReadFailure(path, None, None, f"unreadable: {exc.strerror}")
    size, mtime_ns = stat.st_size, stat.st_mtime_ns
    if size == 0:
        return ReadFailure(path, size, mtime_ns, "empty file (0 bytes)")
    lower = path.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard padding etc.: astropy copes, we record values
            primary = None
            hdu_index = 0
            header = None
            if not lower.endswith((".gz", ".fz")):
                with open(path, "rb") as fh:
                    raw, sha256 = _read_plain(fh, size)
                header = fits.Header.fromstring(raw.decode("ascii", errors="replace"))
                if _has_image(header):
                    needed = len(raw) + _data_bytes(header)
                    if size < needed:
                        raise HeaderError(f"truncated: the header needs {needed} bytes, the file has {size}")
                    header_text = cards_text(raw.decode("ascii", errors="replace"))
                else:
                    header = None
            else:
                sha256 = _sha256(path)
            if header is None:
                header, primary, hdu_index = _read_with_astropy(path)
                header_text = cards_text(header.tostring())
            view = HeaderView(header)
            primary_view = HeaderView(primary) if primary is not None else None
            normalized = normalize_header(
                view, dialects, primary=primary_view, path=Path(path), folders=folders, sites=sites
            )
            axes, bitpix = _shape(view)
    except HeaderError as exc:
        return ReadFailure(path, size, mtime_ns, str(exc))
    except OSError as exc:
        return ReadFailure(path, size, mtime_ns, f"unreadable: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for broken headers
        return ReadFailure(path, size, mtime_ns, f"header unparseable: {type(exc).__name__}: {exc}".splitlines()[0])
    return FileRead(
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        sha256=sha256,
        header=header_text,
        primary_header=cards_text(primary.tostring()) if primary is not None else None,
        hdu_index=hdu_index,
        naxis=axes,
        bitpix=bitpix,
        normalized=normalized,
    )
