"""Bad and odd input (issue 13, the ingest side): every defect found by throwing a corpus of
broken files at ingest has a test here, on both backends where the catalogue is involved."""

from __future__ import annotations

from astropy.io import fits

from archive.ingest.headers import CardIndex


class _CountingText(str):
    """A str that counts the characters its slices and concatenations copy (the reader's work)."""

    copied = 0

    def __getitem__(self, index):
        piece = _CountingText(str.__getitem__(self, index))
        _CountingText.copied += len(piece)
        return piece

    def __add__(self, other):
        joined = _CountingText(str.__add__(self, other))
        _CountingText.copied += len(joined)
        return joined


def _copied_to_index(n_continue: int) -> int:
    header = fits.Header()
    header["LONGSTR"] = "x" * (67 * n_continue)
    header["EXPTIME"] = 30.0
    text = _CountingText(header.tostring())
    _CountingText.copied = 0
    index = CardIndex(text)
    assert index.get("EXPTIME") == 30.0
    return _CountingText.copied


def test_many_continue_cards_are_indexed_in_linear_work():
    """20 MB of CONTINUE cards took 101 s: each card was appended to a growing string."""
    small, large = _copied_to_index(2000), _copied_to_index(8000)
    assert large <= 4 * small * 1.2  # linear: 4x the cards, 4x the characters copied (quadratic: 16x)


def test_a_long_continued_string_is_read_as_astropy_reads_it():
    header = fits.Header()
    header["LONGSTR"] = "abc&'d " * 3000
    assert CardIndex(header.tostring()).get("LONGSTR") == header["LONGSTR"]
