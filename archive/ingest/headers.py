"""Reading one FITS file for the catalogue: checksum, image header, normalized values.

Plain FITS files (the common case) are read once, as a stream: the header blocks are indexed
by keyword (:class:`CardIndex`) and the rest only hashed, so no pixel data is decoded and only
the values normalization asks for are parsed.
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

from archive.errors import HeaderError
from archive.files import sha256_file
from archive.ingest.dialects import DialectSet, Normalized, normalize_header

BLOCK = 2880  # FITS logical record, bytes (FITS standard 4.0, sec. 3.1)
CARD = 80
_END = b"END" + b" " * 77
_CHUNK = 1 << 20
_HEAD = 1 << 16


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


class CardIndex(Mapping):
    """Read-only header view over the raw 80-character cards, parsing values on demand.

    Ingest needs some 25 values of a header of ~100 cards, so cards are indexed by keyword
    (the first occurrence wins, as in astropy; ``HIERARCH ESO DPR TYPE`` is found as
    ``ESO DPR TYPE``) and a value is parsed only when asked for: plain strings, logicals,
    integers and reals here (FITS standard 4.0, sec. 4.2), anything else (long strings
    continued over CONTINUE cards, complex values, D exponents, odd spacing) by astropy's
    :class:`~astropy.io.fits.Card`.
    """

    def __init__(self, text: str):
        # keyword -> its card and any CONTINUE cards, joined on first use: appending to a list
        # keeps a long string of many CONTINUE cards linear (a string += is quadratic).
        self._cards: dict[str, list[str]] = {}
        #: The cards up to END without trailing blanks, blank cards left out (the stored header).
        self.lines: list[str] = []
        previous = None
        for i in range(0, len(text) - CARD + 1, CARD):
            card = text[i : i + CARD]
            line = card.rstrip()
            if not line:
                continue
            if "\x00" in line:  # non-standard NUL padding: blanks, as astropy reads it
                card = card.replace("\x00", " ")
                line = card.rstrip()
                if not line:
                    continue
            if line == "END":
                break
            self.lines.append(line)
            if card[8:10] == "= " and card[:8] not in _COMMENTARY:
                key = card[:8].rstrip().upper()
                if key == "HIERARCH":
                    key = card[9 : card.find("=")].strip().upper()
            elif card.startswith("HIERARCH ") and "=" in card:
                key = card[9 : card.find("=")].strip().upper()
            elif card.startswith("CONTINUE") and previous is not None:
                self._cards[previous].append(card)
                continue
            else:
                previous = None
                continue
            previous = None
            if key not in self._cards:
                self._cards[key] = [card]
                previous = key
        self._values: dict[str, Any] = {}

    @property
    def stored(self) -> str:
        """The header as the catalogue stores it: :attr:`lines` joined by newlines."""
        return "\n".join(self.lines)

    def get(self, key: str, default: Any = None) -> Any:
        key = key.upper()
        if key not in self._values:
            cards = self._cards.get(key)
            if cards is None:
                return default
            self._values[key] = _card_value(cards[0] if len(cards) == 1 else "".join(cards))
        value = self._values[key]
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self._cards

    def __iter__(self):
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)


_MISSING = object()
#: Commentary keywords (FITS 4.0 sec. 4.4.2.4): never values, even when a "= " follows.
_COMMENTARY = ("COMMENT ", "HISTORY ", "        ")


def _card_value(card: str) -> Any:
    """The value of one card (None for an undefined value)."""
    if len(card) == CARD:
        value = card[10:] if not card.startswith("HIERARCH") else card[card.find("=") + 1 :]
        body = value.lstrip()
        if body.startswith("'"):
            close = body.find("'", 1)
            if close > 0 and body[close + 1 : close + 2] != "'" and "''" not in body[:close] and not body[:close].endswith("&"):
                rest = body[close + 1 :].lstrip()
                if not rest or rest.startswith("/"):
                    return body[1:close].rstrip()
        else:
            token = body.split("/", 1)[0].strip()
            if token in ("T", "F"):
                return token == "T"
            if token == "":
                return None
            try:
                return int(token)
            except ValueError:
                pass
            if "D" not in token.upper() and "(" not in token:
                try:
                    return float(token)
                except ValueError:
                    pass
    from astropy.io import fits  # imported on first use: plain files never need it

    value = fits.Card.fromstring(card).value
    return None if isinstance(value, fits.card.Undefined) else value


def header_from_text(text: str):
    """Rebuild an :class:`astropy.io.fits.Header` from the text stored in the catalogue."""
    from astropy.io import fits

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
    """Read the primary header blocks and hash the whole file; returns (header bytes, sha256).

    The first 64 KiB are read at once (a whole small frame, or the header of a large one); the
    header ends with the 2880-byte block holding the END card (FITS 4.0, sec. 4.4.1).
    """
    head = bytearray(fh.read(_HEAD))  # grows in place: a header of many blocks is read in linear time
    if not head.startswith(b"SIMPLE  ="):
        raise HeaderError("not a FITS file: it does not begin with a SIMPLE card")
    position = 0
    while True:
        position = head.find(_END, position)
        if position >= 0 and position % CARD:  # blanks across two cards, not an END card
            position += 1
            continue
        end = (position // BLOCK + 1) * BLOCK if position >= 0 else None
        if end is not None and end <= len(head):
            break
        more = fh.read(_HEAD)
        if not more:
            raise HeaderError(f"truncated: the header has no END card within the file's {size} bytes" if position < 0
                              else f"truncated: the header's last block ends after the file's {size} bytes")
        if position < 0:
            position = max(0, len(head) - len(head) % CARD - CARD)
        head += more
    digest = hashlib.sha256(head)
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return bytes(head[:end]), digest.hexdigest()


def _read_with_astropy(path: str):
    """(image header, primary header if the image is in an extension, HDU index)."""
    from astropy.io import fits

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
                header = CardIndex(raw.decode("ascii", errors="replace"))
                if not _has_image(header):
                    header = None
                elif size < len(raw) + _data_bytes(header):
                    raise HeaderError(
                        f"truncated: the header needs {len(raw) + _data_bytes(header)} bytes, the file has {size}"
                    )
            else:
                sha256 = sha256_file(path)
            if header is None:
                image, primary_header, hdu_index = _read_with_astropy(path)
                header = CardIndex(image.tostring())
                primary = CardIndex(primary_header.tostring()) if primary_header is not None else None
            normalized = normalize_header(
                header, dialects, primary=primary, path=Path(path), folders=folders, sites=sites
            )
            axes, bitpix = _shape(header)
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
        header=header.stored,
        primary_header=primary.stored if primary is not None else None,
        hdu_index=hdu_index,
        naxis=axes,
        bitpix=bitpix,
        normalized=normalized,
    )
