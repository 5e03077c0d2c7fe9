"""Bad and odd input (issue 13, the ingest side): every defect found by throwing a corpus of
broken files at ingest has a test here, on both backends where the catalogue is involved."""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePath

import pytest
from astropy.io import fits
from sqlalchemy import select

from archive.db import Copy, Frame, IngestProblem, session_scope
from archive.ingest import ingest_paths
from archive.ingest.dialects import DialectSet, normalize_header
from archive.ingest.headers import CardIndex
from tests.factories import nina_header, write_fits


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


# -- helpers ----------------------------------------------------------------------------------------

def _light(path: Path, seed: int = 1, **cards) -> Path:
    header = nina_header(**{"DATE-OBS": f"2026-11-20T22:{seed % 60:02d}:00"})
    header.update(cards)
    return write_fits(path, {k: v for k, v in header.items() if v is not None}, seed=seed)


def _mutate(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    """Copy ``source`` with one 80-character card's value field replaced (bytes, verbatim)."""
    data = source.read_bytes()
    assert old in data, old
    target.write_bytes(data.replace(old, new.ljust(len(old)), 1))
    return target


def _card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".encode()


def _frames(engine):
    with session_scope(engine) as s:
        rows = s.execute(select(Copy.path, Frame).join(Frame, Copy.frame_id == Frame.id)).all()
    return {Path(p).name: f for p, f in rows}


def _problems(engine, severity: str) -> dict[str, str]:
    with session_scope(engine) as s:
        rows = s.execute(select(IngestProblem.path, IngestProblem.reason).where(IngestProblem.severity == severity))
        return {Path(p).name: r for p, r in rows}


# -- 1. image type: a generic type is refined only on strong evidence --------------------------------

@pytest.fixture(scope="module")
def dialects():
    return DialectSet()


def _type(dialects, cards: dict, name: str = "frame.fits", folders=()):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    out = normalize_header(CardIndex(header.tostring()), dialects, path=PurePath(name), folders=folders)
    return out.values["image_type"], out.sources.get("image_type")


@pytest.mark.parametrize("cards, name", [
    ({"OBJECT": "Dark Shark Nebula"}, "frame.fits"),
    ({"OBJECT": "Barnards Arc"}, "frame.fits"),
    ({"OBJECT": "Dark Shark Nebula"}, "Dark Shark Nebula_Ha_300s_001.fits"),  # named after the target
    ({"OBJECT": "NGC 891"}, "NGC891_zeropoint_001.fits"),  # "zero" inside a longer token
    ({"OBJECT": "M 31"}, "M31_Light_dark_sky_001.fits"),  # the name itself says Light
    ({"OBJECT": "zero_pointing"}, "frame.fits"),
])
def test_an_explicit_light_is_not_overridden_by_words_inside_names(dialects, cards, name):
    kind, source = _type(dialects, {"IMAGETYP": "LIGHT", **cards}, name)
    assert (kind, source) == ("light", "IMAGETYP='LIGHT'")


@pytest.mark.parametrize("cards, name, folders, expected, evidence", [
    ({"IMAGETYP": "LIGHT", "OBJECT": "Flat field"}, "f.fits", (), "flat", "OBJECT 'Flat field' is a calibration phrase"),
    ({"IMAGETYP": "LIGHT", "OBJECT": "dark_003"}, "f.fits", (), "dark", "OBJECT 'dark_003' is a calibration phrase"),
    ({"IMAGETYP": "LIGHT"}, "Dark_300s_001.fits", (), "dark", "word 'dark' in file name 'Dark_300s_001'"),
    ({"IMAGETYP": "LIGHT"}, "bias3.fits", (), "bias", "word 'bias3' in file name 'bias3'"),
    ({"EXPTIME": 5.0}, "frame_001.fits", ("2026-11-20", "Flats"), "flat", "word 'flats' in folder 'Flats'"),
])
def test_a_generic_type_is_refined_on_strong_evidence_recorded_in_sources(dialects, cards, name, folders,
                                                                             expected, evidence):
    kind, source = _type(dialects, cards, name, folders)
    assert kind == expected and source.startswith(evidence)
    if "IMAGETYP" in cards:
        assert source.endswith("(over IMAGETYP='LIGHT')")


def test_lco_exposures_are_lights(engine, shared_data):
    """OBSTYPE 'EXPOSE' is LCO's science exposure; OBJECT 'zero_pointing' is no bias
    (before: 2 untyped, 2 typed bias)."""
    summary = ingest_paths(engine, [shared_data / "lco-fz-ocs-archive"])
    assert summary.ok and summary.by_type == Counter(light=4)
    with session_scope(engine) as s:
        sources = s.scalars(select(Frame.sources)).all()
    assert {src["image_type"] for src in sources} == {"OBSTYPE='EXPOSE'"} and {src["dialect"] for src in sources} == {"lco/1"}
