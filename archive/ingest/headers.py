"""Reading one FITS file for the catalogue: checksum, image header, normalized values.

Plain FITS files (the common case) are read once, as a stream: the header blocks are indexed
by keyword (:class:`archive.ingest.cards.CardIndex`) and the rest only hashed, so no pixel data
is decoded and only the values normalization asks for are parsed.
Multi-extension, gzip- and tile-compressed files are opened with ``astropy.io.fits`` (lazily)
to find the HDU holding the image. Files are opened read-only and never modified.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from archive.errors import HeaderError
from archive.files import HashingReader, sha256_file
from archive.ingest.cards import CARD, CardIndex
from archive.ingest.dialects import DialectSet, Normalized
from archive.ingest.normalize import normalize_header

BLOCK = 2880  # FITS logical record, bytes (FITS standard 4.0, sec. 3.1)
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
    #: The sky footprint, when computed while reading (:func:`archive.ingest.sky.read_footprints`,
    #: in the worker processes, ahead of the serialized writes); ``placed`` says it was.
    footprint: dict | None = None
    placed: bool = False


@dataclass
class ReadFailure:
    """A file that could not be ingested, with a one-line reason (valid UTF-8: a reason that
    quotes a file name whose bytes are not UTF-8 shows them as ``\\xHH``)."""

    path: str
    size: int | None
    mtime_ns: int | None
    reason: str

    def __post_init__(self) -> None:
        self.reason = self.reason.encode("utf-8", errors="backslashreplace").decode("utf-8").replace("\x00", "\\x00")


#: BITPIX values the FITS standard allows (FITS 4.0, table 8).
_BITPIX = (8, 16, 32, 64, -32, -64)
#: The largest NAXISn the catalogue's 32-bit columns hold.
_AXIS_MAX = 2**31 - 1


def _structure(header: Mapping, *, compressed: bool = False) -> tuple[tuple[int | None, int | None, int | None], int]:
    """Check the keywords that lay out an image's data and return ((NAXIS1..3), BITPIX).

    BITPIX must be one of the standard's six values, NAXIS a whole number 0..999 and each
    NAXISn (n <= NAXIS) a whole number 0..2**31-1 (FITS 4.0, sec. 4.4.1). These say where the
    pixels are; a file that breaks them has no image anyone can read, so it is refused (no
    frame is catalogued whose pixels could not be read later).

    Raises
    ------
    HeaderError
        Naming the keyword and its value (ZBITPIX, ZNAXISn for a tile-compressed image).
    """
    z = "Z" if compressed else ""

    def whole(key: str, low: int, high: int) -> int:
        value = header.get(key)
        if value is None:
            raise HeaderError(f"{z}{key} is missing: the image's layout is unknown")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
                or not low <= value <= high:
            raise HeaderError(f"{z}{key}={value!r} is not a valid {z}{key} (a whole number {low}..{high}): "
                              "the image's layout is unknown")
        return int(value)

    bitpix = header.get("BITPIX")
    if bitpix is None or isinstance(bitpix, bool) or bitpix not in _BITPIX:
        raise HeaderError(f"{z}BITPIX is missing: the pixel type is unknown" if bitpix is None else
                          f"{z}BITPIX={bitpix!r} is not a FITS BITPIX (one of 8, 16, 32, 64, -32, -64)")
    naxis = whole("NAXIS", 0, 999)
    axes = [whole(f"NAXIS{i}", 0, _AXIS_MAX) for i in range(1, naxis + 1)]
    return (tuple(axes[:3]) + (None,) * (3 - min(3, naxis))), int(bitpix)  # type: ignore[return-value]


def _data_bytes(header: Mapping) -> int:
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        return 0
    count = math.prod(int(header.get(f"NAXIS{i}", 0) or 0) for i in range(1, naxis + 1))
    pcount, gcount = int(header.get("PCOUNT", 0) or 0), int(header.get("GCOUNT", 1) or 1)
    return abs(int(header.get("BITPIX", 8))) // 8 * gcount * (pcount + count)


def _has_image(header: Mapping, *, compressed: bool = False) -> bool:
    """Whether a valid layout (:func:`_structure`; raises HeaderError) describes at least one pixel."""
    _structure(header, compressed=compressed)
    naxis = int(header.get("NAXIS"))
    return naxis > 0 and all(int(header.get(f"NAXIS{i}")) > 0 for i in range(1, naxis + 1))


def _read_head(fh, size: int) -> bytearray:
    """Read from ``fh`` up to the end of the primary header: the 2880-byte block holding the
    END card (FITS 4.0, sec. 4.4.1); returns what was read (the header and maybe more).

    The first 64 KiB are read at once (a whole small frame, or the header of a large one).
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
            return head
        more = fh.read(_HEAD)
        if not more:
            raise HeaderError(f"truncated: the header has no END card within the file's {size} bytes" if position < 0
                              else f"truncated: the header's last block ends after the file's {size} bytes")
        if position < 0:
            position = max(0, len(head) - len(head) % CARD - CARD)
        head += more


def _header_end(head: bytes | bytearray) -> int:
    position = 0
    while True:
        position = head.find(_END, position)
        if position % CARD == 0:
            return (position // BLOCK + 1) * BLOCK
        position += 1


def _read_plain(fh, size: int) -> tuple[bytes, str]:
    """Read the primary header blocks and hash the whole file; returns (header bytes, sha256)."""
    head = _read_head(fh, size)
    digest = hashlib.sha256(head)
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return bytes(head[: _header_end(head)]), digest.hexdigest()


def _read_gzip(path: str, size: int) -> tuple[bytes, str, int]:
    """Read a gzip-compressed file once: hash its bytes, decompress it to the end (so that
    :mod:`gzip` checks its CRC-32 and length, RFC 1952) and keep the primary header.

    Returns
    -------
    (header bytes, sha256 of the compressed file, decompressed size in bytes)

    Raises
    ------
    HeaderError
        The gzip stream is corrupt or cut short, or holds no FITS file.
    """
    with open(path, "rb") as raw:
        hashing = HashingReader(raw)
        try:
            with gzip.GzipFile(fileobj=hashing, mode="rb") as stream:
                head = _read_head(stream, size)
                end = _header_end(head)
                probe = _hdu_end(CardIndex(head[:end].decode("ascii", errors="replace")), end)
                buffer, length = head, 0
                while True:
                    if probe is not None and length <= probe < length + len(buffer):
                        after = bytes(buffer[probe - length : probe - length + BLOCK])
                        if not (after.startswith(b"XTENSION") or not after.strip(b"\0")):
                            raise HeaderError(
                                f"the header's NAXIS, NAXISn and BITPIX describe {probe} bytes, but what follows in "
                                "the decompressed file is not a FITS extension: a false NAXIS, NAXISn or BITPIX, "
                                "or bytes appended")
                    length += len(buffer)
                    buffer = stream.read(_CHUNK)
                    if not buffer:
                        break
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise HeaderError(f"corrupt gzip file: {exc}") from exc
        hashing.drain()
    return bytes(head[:end]), hashing.hexdigest(), length


def _hdu_end(header: CardIndex, header_bytes: int) -> int | None:
    """Where the primary HDU ends by its layout keywords (None when they do not describe an image)."""
    try:
        if not _has_image(header):
            return None
    except (HeaderError, ValueError):
        return None
    return header_bytes + -(-_data_bytes(header) // BLOCK) * BLOCK


def _after_data(fh, offset: int, size: int) -> None:
    """Check what follows the primary HDU's data at ``offset``: nothing, zero padding, or an
    extension; anything else means the header's layout keywords are false."""
    if offset >= size:
        return
    fh.seek(offset)
    block = fh.read(BLOCK)
    if block.startswith(b"XTENSION") or not block.strip(b"\0"):
        return
    raise HeaderError(f"the header's NAXIS, NAXISn and BITPIX describe {offset} bytes, but the file has {size} "
                      "and what follows is not a FITS extension: a false NAXIS, NAXISn or BITPIX, or bytes appended")


def _read_with_astropy(path: str):
    """(image header, primary header if the image is in an extension, HDU index), with the
    checks astropy can make on the way: DATASUM of every HDU read, where present;
    a tile-compressed image is decompressed (a corrupt heap fails here)."""
    from astropy.io import fits

    seen: list[str] = []

    def false_layout(exc: Exception) -> HeaderError:
        # astropy reads ahead, so the HDU whose layout is false is the last one read or the next
        where = f"an HDU after HDU {len(seen) - 1}" if seen else "the first HDU"
        return HeaderError(
            f"no FITS header where {where} should begin ({str(exc).strip()}): a false NAXIS, NAXISn, BITPIX "
            "or PCOUNT, or bytes appended to the file"
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=True, checksum=True)
        except OSError as exc:
            if "END card" in str(exc):  # astropy reads ahead: the primary HDU was read, the next one fails
                seen.append("HDU 0")
                raise false_layout(exc) from exc
            raise
        with hdul:
            found = None
            index = 0
            while found is None:
                try:
                    hdu = hdul[index]
                except IndexError:
                    break
                except KeyError as exc:  # astropy: a compressed image's header lacks a keyword
                    raise HeaderError(f"HDU {index}: incomplete header: {exc.args[0] if exc.args else exc}") from exc
                except (OSError, ValueError) as exc:
                    if "END card" not in str(exc) and "header" not in str(exc).lower():
                        raise
                    raise false_layout(exc) from exc
                compressed = isinstance(hdu, fits.CompImageHDU)
                seen.append(f"HDU {index}: {type(hdu).__name__}")
                if hdu.is_image and hdu.header.get("NAXIS", 0) != 0 and _has_image(hdu.header, compressed=compressed):
                    if compressed:
                        try:
                            hdu.data  # noqa: B018 - decompress every tile: the only check of the heap
                        except Exception as exc:  # noqa: BLE001 - the compression library raises its own types
                            raise HeaderError(f"corrupt compressed image in HDU {index}: {exc}".splitlines()[0]) from exc
                    found = (hdu.header.copy(), hdul[0].header.copy() if index else None, index)
                    try:  # the next HDU must begin where this one's layout says it ends
                        hdul[index + 1]
                    except IndexError:
                        pass
                    except (OSError, ValueError) as exc:
                        if "END card" not in str(exc) and "header" not in str(exc).lower():
                            raise
                        raise false_layout(exc) from exc
                index += 1
    messages = [str(w.message).strip() for w in caught]
    truncated = [m for m in messages if "truncat" in m.lower()]
    if truncated:
        raise HeaderError(f"truncated: {truncated[0]}")
    if found is None:
        tables = [s for s in seen if "Table" in s]
        raise HeaderError("not an image: the file holds only tables (" + ", ".join(tables) + ")" if tables
                          else "no image: no HDU of the file has a data array")
    # Only DATASUM: astropy checks CHECKSUM against the header as it re-serializes it (its fixes
    # of non-standard cards make valid checksums fail); the data it checks byte for byte.
    corrupt = [m for m in messages if "Datasum verification failed" in m]
    if corrupt:
        raise HeaderError(f"corrupt: {corrupt[0]} (the data do not sum to the header's DATASUM)")
    return found


def _has_checksum(header: Mapping) -> bool:
    return "CHECKSUM" in header or "DATASUM" in header


def ones_complement_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 32-bit ones' complement sum of ``data`` (big-endian 32-bit words, end-around carry),
    added to ``start``: the sum behind FITS DATASUM and CHECKSUM (FITS 4.0, appendix J;
    Seaman et al. 2002). ``len(data)`` must be a multiple of 4 (FITS blocks are)."""
    import numpy as np  # imported on first use: only files with checksums need it

    total = int(np.frombuffer(data, dtype=">u4").sum(dtype=np.uint64)) + start
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _verify_checksums(path: str, header: CardIndex, header_bytes: int) -> None:
    """Check a plain file's primary HDU against its DATASUM and CHECKSUM, on the raw bytes.

    Done here rather than by astropy, which verifies the header as it re-serializes it: its
    fixes of non-standard cards (common in ESO headers) make valid checksums fail.

    Raises
    ------
    HeaderError
        The data do not sum to DATASUM, or the whole HDU does not sum to -0 (CHECKSUM).
    """
    data_bytes = -(-_data_bytes(header) // BLOCK) * BLOCK
    with open(path, "rb") as fh:
        head = fh.read(header_bytes)
        data_sum = 0
        remaining = data_bytes
        while remaining and (chunk := fh.read(min(_CHUNK, remaining))):
            data_sum = ones_complement_sum(chunk, data_sum)
            remaining -= len(chunk)
    expected = header.get("DATASUM")
    if expected is not None and str(expected).strip():
        try:
            matches = int(str(expected).strip()) == data_sum
        except ValueError:
            matches = False
        if not matches:
            raise HeaderError(f"corrupt: the data sum to {data_sum}, the header's DATASUM says {str(expected).strip()}")
    if "CHECKSUM" in header and ones_complement_sum(head, data_sum) != 0xFFFFFFFF:
        raise HeaderError("corrupt: the bytes of the header and data do not match the header's CHECKSUM")


def read_fits(
    path: str,
    dialects: DialectSet,
    *,
    folders: tuple[str, ...] = (),
    sites: Mapping[str, float] | None = None,
) -> FileRead | ReadFailure:
    """Read one file for the catalogue; never raises for a bad file.

    What can be checked while the bytes are read for the hash is checked: the layout keywords
    (BITPIX, NAXIS, NAXISn; :func:`_structure`), the file's length against them, a gzip file's
    CRC, CHECKSUM/DATASUM where the header has them, the tiles of a compressed image without
    them. FITS tables are not images: a file with no image HDU is a problem, not a frame.

    Parameters
    ----------
    path : str
        The file (any FITS form: plain, multi-extension, ``.gz``, tile-compressed ``.fz``).
    dialects : DialectSet
        Keyword dialects for :func:`archive.ingest.normalize.normalize_header`.
    folders : tuple of str
        Folder names from the ingested root down to the file (image-type words).
    sites : mapping, optional
        Configured site longitude per instrument.

    Returns
    -------
    FileRead or ReadFailure
        The record to ingest, or the path with a one-line reason (empty, not a regular file, not
        FITS, truncated, corrupt, an impossible layout, unparseable header, no image).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        return ReadFailure(path, None, None, f"unreadable: {exc.strerror}")
    size, mtime_ns = info.st_size, info.st_mtime_ns
    if not stat.S_ISREG(info.st_mode):
        return ReadFailure(path, size, mtime_ns, f"not a regular file: {_FILE_KINDS.get(stat.S_IFMT(info.st_mode), 'special file')}")
    if size == 0:
        return ReadFailure(path, size, mtime_ns, "empty file (0 bytes)")
    lower = path.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard padding etc.: astropy copes, we record values
            primary = None
            hdu_index = 0
            header = None
            if not lower.endswith(".fz"):
                if lower.endswith(".gz"):
                    raw, sha256, length = _read_gzip(path, size)
                else:
                    with open(path, "rb") as fh:
                        raw, sha256 = _read_plain(fh, size)
                    length = size
                header = CardIndex(raw.decode("ascii", errors="replace"))
                if not _has_image(header):
                    header = None
                else:
                    needed = len(raw) + _data_bytes(header)
                    if length < needed:
                        raise HeaderError(f"truncated: the header needs {needed} bytes, the file has {length}")
                    end = len(raw) + -(-_data_bytes(header) // BLOCK) * BLOCK
                    if not lower.endswith(".gz") and end < size:  # more than the image: extensions?
                        with open(path, "rb") as fh:
                            _after_data(fh, end, size)
                    if _has_checksum(header) and not lower.endswith(".gz"):  # gzip has its CRC
                        _verify_checksums(path, header, len(raw))
            else:
                sha256 = sha256_file(path)
            if header is None:
                image, primary_header, hdu_index = _read_with_astropy(path)
                header = CardIndex(image.tostring())
                primary = CardIndex(primary_header.tostring()) if primary_header is not None else None
            axes, bitpix = _structure(header)
            normalized = normalize_header(
                header, dialects, primary=primary, path=Path(path), folders=folders, sites=sites
            )
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


_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}
