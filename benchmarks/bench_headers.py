"""Header reading benchmark (issue 13): a primary header holding one long string continued over
many CONTINUE cards (the 20 MB header that took 101 s), read by archive's ingest reader
(:func:`archive.ingest.headers.read_fits`) at growing sizes.

The time per megabyte should stay about constant (linear reading); before the fix each
doubling of the header quadrupled the time. The test suite checks the same property by
counting the characters the card index copies (``tests/test_bad_input.py``); this gives the
seconds.

Usage::

    python benchmarks/bench_headers.py              # 2.5, 5, 10 and 20 MB
    python benchmarks/bench_headers.py --mb 1 2     # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from archive.ingest.dialects import DialectSet
from archive.ingest.headers import FileRead, read_fits


def write_long_header(path: Path, megabytes: float) -> int:
    """A 16x16 frame whose header continues one string over ``megabytes`` MB of CONTINUE cards
    (written card by card: astropy takes minutes to format such a string itself)."""
    n = max(1, int(megabytes * 1e6 / 80))
    cards = [
        f"{'SIMPLE':<8}= {'T':>20}", f"{'BITPIX':<8}= {16:>20}", f"{'NAXIS':<8}= {2:>20}",
        f"{'NAXIS1':<8}= {16:>20}", f"{'NAXIS2':<8}= {16:>20}", f"{'IMAGETYP':<8}= 'LIGHT'",
        f"{'EXPTIME':<8}= {60.0:>20}", "LONGNOTE= '" + "x" * 67 + "&'",
    ]
    cards += ["CONTINUE  '" + "x" * 67 + "&'"] * (n - 1) + ["CONTINUE  'end'", "END"]
    text = "".join(card.ljust(80) for card in cards)
    text = text.ljust(-(-len(text) // 2880) * 2880)
    data = np.zeros((16, 16), dtype=">i2").tobytes()
    path.write_bytes(text.encode("ascii") + data + bytes(2880 - len(data)))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[2.5, 5.0, 10.0, 20.0])
    args = parser.parse_args()
    dialects = DialectSet()
    with tempfile.TemporaryDirectory() as folder:
        print(f"{'header MB':>10} {'read s':>8} {'s per MB':>9}")
        for mb in args.mb:
            path = Path(folder) / f"long_{mb}.fits"
            size = write_long_header(path, mb)
            start = time.perf_counter()
            read = read_fits(str(path), dialects)
            seconds = time.perf_counter() - start
            assert isinstance(read, FileRead), read
            print(f"{size / 1e6:10.1f} {seconds:8.2f} {seconds / (size / 1e6):9.3f}")


if __name__ == "__main__":
    main()
