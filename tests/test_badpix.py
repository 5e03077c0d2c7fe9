"""Bad-pixel masks (issue 10 part 2), on both backends.

SYNTHETIC (said so): a 256 x 256 night of 3 bias, 3 darks with 40 hot pixels, 3 flats with a
dead column and 8 lights of a drifting star field carrying the same hot pixels and column.
REAL: the ARCSAT night (arcsat-uw-astr480) with and without its darks.
"""

from __future__ import annotations

import re
import shutil

import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import select

from archive.calib.badpix import channels, cold_pixels, hot_pixels, light_outliers
from archive.calib.select import explain_selection
from archive.cli import main
from archive.db.frames import canonical_paths
from archive.db.models import Frame, Master, Reduction, ReductionInput
from archive.db.session import open_catalogue, session_scope
from archive.reduce.stale import find_stale
from tests.conftest import SHARED_DATA, catalogue_url
from tests.factories import nina_header, write_fits

SHAPE = (256, 256)
RNG = np.random.default_rng(21)
HOT = np.unique(RNG.integers(6, 250, (40, 2)), axis=0)  # (y, x)
DEAD_COLUMN = 77
STARS = RNG.uniform(40, 200, (30, 2))
FLUX = RNG.uniform(5000, 40000, 30)
DRIFT = [(3.1 * k, -2.3 * k) for k in range(8)]


def _stars(dx: float, dy: float) -> np.ndarray:
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    image = np.zeros(SHAPE)
    for (sx, sy), flux in zip(STARS, FLUX):
        image += (
            flux
            / (2 * np.pi * 1.6**2)
            * np.exp(-((x - sx - dx) ** 2 + (y - sy - dy) ** 2) / (2 * 1.6**2))
        )
    return image


def _write(path, kind: str, exposure: float, minute: int, image: np.ndarray) -> None:
    write_fits(
        path,
        nina_header(
            kind,
            EXPTIME=exposure,
            EXPOSURE=exposure,
            **{"DATE-OBS": f"2026-11-20T21:{minute:02d}:00"},
        ),
        data=np.clip(image, 0, 65535).astype(np.uint16),
    )


def _night(folder, *, darks: bool = True) -> None:
    """The synthetic night (module docstring): bias 500 ADU, dark current 20 ADU per 60 s,
    hot pixels +2000 ADU per 60 s, flats at 20000 ADU with column 77 at 5 %."""
    rng = np.random.default_rng(3)
    hot = np.zeros(SHAPE)
    hot[HOT[:, 0], HOT[:, 1]] = 2000.0
    response = np.ones(SHAPE)
    response[:, DEAD_COLUMN] = 0.05
    for i in range(3):
        _write(folder / f"bias_{i}.fits", "BIAS", 0.0, i, 500 + rng.normal(0, 3, SHAPE))
        if darks:
            _write(
                folder / f"dark_{i}.fits",
                "DARK",
                60.0,
                5 + i,
                520 + hot + rng.normal(0, 5, SHAPE),
            )
        # a flat carries its 2 s of dark current (the hot pixels too), which the scaled dark removes
        _write(
            folder / f"flat_{i}.fits",
            "FLAT",
            2.0,
            10 + i,
            500 + (20 + hot) * 2 / 60 + 20000 * response + rng.normal(0, 30, SHAPE),
        )
    for k, (dx, dy) in enumerate(DRIFT):
        sky = (1000 + _stars(dx, dy)) * response
        _write(
            folder / f"m31_{k}.fits",
            "LIGHT",
            60.0,
            20 + k,
            520 + hot + sky + rng.normal(0, 10, SHAPE),
        )


def _archive_night(tmp_path, url: str):
    """``archive night 2026-11-20`` on the imaging root under ``tmp_path`` (serial, no measuring)."""
    result = CliRunner().invoke(
        main,
        ["--db", url, "night", "2026-11-20", "--root", str(tmp_path / "imaging"), "--output",
         str(tmp_path / "out"), "--serial", "--no-measure"],
        env=_env(tmp_path),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result


def _env(tmp_path) -> dict[str, str]:
    return {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}


def _run_night(tmp_path, url: str, *, darks: bool = True):
    _night(tmp_path / "imaging" / "2026-11-20", darks=darks)
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    _archive_night(tmp_path, url)


def _hot_set(mask: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(map(int, p)) for p in np.argwhere(mask)}


def _mask_of(session) -> tuple[Master, np.ndarray, fits.Header]:
    masks = session.scalars(select(Master).where(Master.kind == "badpix")).all()
    assert len(masks) == 1
    path = canonical_paths(session, [masks[0].frame_id])[masks[0].frame_id]
    with fits.open(path) as hdul:
        return masks[0], np.array(hdul[0].data), hdul[0].header


def _assert_cold_is_ccdmask(session, mask: np.ndarray) -> None:
    """The mask's cold pixels are ccdproc.ccdmask of the master flat, called here on its own:
    the dead column whole, and the few pixels ccdmask's defaults flag besides (about 5e-5 of a
    flat of pure Gaussian noise; without a dark, the flat's own hot pixels too)."""
    flat = session.scalars(select(Master).where(Master.kind == "flat")).one()
    with fits.open(canonical_paths(session, [flat.frame_id])[flat.frame_id]) as hdul:
        expected = np.asarray(ccdproc.ccdmask(hdul[0].data.astype(np.float64)))
    np.testing.assert_array_equal((mask & 2) != 0, expected)
    assert (
        expected[:, DEAD_COLUMN].all() and expected.sum() - SHAPE[0] < 5e-4 * mask.size
    )


def _shifts(session) -> dict[int, tuple[float, float]]:
    """Light number (m31_<k>) -> registered shift (dx, dy)."""
    out = {}
    for reduction in session.scalars(
        select(Reduction).where(
            Reduction.step == "register", Reduction.status == "done"
        )
    ):
        light_id = int(reduction.lineage.split(":")[1])
        k = int(
            re.search(
                r"m31_(\d)", canonical_paths(session, [light_id])[light_id]
            ).group(1)
        )
        out[k] = (reduction.results["dx"], reduction.results["dy"])
    return out


def _assert_shifts_follow_the_drift(shifts: dict[int, tuple[float, float]]) -> None:
    assert len(shifts) == len(DRIFT)
    # the shift onto the reference undoes the drift: dx + drift is one constant for every light
    offsets = np.array(
        [(dx + DRIFT[k][0], dy + DRIFT[k][1]) for k, (dx, dy) in shifts.items()]
    )
    assert np.ptp(offsets[:, 0]) < 0.5 and np.ptp(offsets[:, 1]) < 0.5, shifts


def _input_roles(session, frame) -> set[str]:
    return set(session.scalars(select(ReductionInput.role).where(ReductionInput.reduction_id == frame.reduction_id)))


def test_the_mask_finds_the_hot_pixels_of_the_darks_and_the_dead_column_of_the_flats(
    db_url, tmp_path
):
    _run_night(tmp_path, db_url)
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            master, mask, header = _mask_of(session)
            assert (
                mask.dtype == np.uint8
                and master.origin == "built"
                and header["BPSOURCE"] == "darks"
            )
            # an independent computation of the stated rule on the master dark
            dark = session.scalars(select(Master).where(Master.kind == "dark")).one()
            with fits.open(
                canonical_paths(session, [dark.frame_id])[dark.frame_id]
            ) as hdul:
                d = hdul[0].data.astype(np.float64)
            median = np.median(d)
            expected = d > median + 6 * 1.4826 * np.median(np.abs(d - median))
            assert (
                _hot_set((mask & 1) != 0)
                == _hot_set(expected)
                == {tuple(p) for p in HOT.tolist()}
            )
            # cold: ccdproc.ccdmask of the master flat, called here on its own: the dead column
            # whole, and the few noise pixels ccdmask's defaults flag in any flat (about 5e-5 of
            # a flat of pure Gaussian noise)
            _assert_cold_is_ccdmask(session, mask)
            # provenance: the mask's inputs are the night's master dark and flat
            frame = session.get(Frame, master.frame_id)
            roles = _input_roles(session, frame)
            assert roles == {"master_dark", "master_flat"}
            # calibrated lights are NaN exactly there, and the registration follows the stars
            calibrated = session.scalars(
                select(Frame).where(Frame.image_type == "calibrated")
            ).all()
            assert len(calibrated) == len(DRIFT)
            for path in canonical_paths(session, [f.id for f in calibrated]).values():
                with fits.open(path) as hdul:
                    np.testing.assert_array_equal(np.isnan(hdul[0].data), mask != 0)
                    assert hdul[0].header["NBADPIX"] == int(np.count_nonzero(mask))
            _assert_shifts_follow_the_drift(_shifts(session))
    finally:
        engine.dispose()


def test_without_darks_the_mask_comes_from_the_lights(db_url, tmp_path):
    _run_night(tmp_path, db_url, darks=False)
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            master, mask, header = _mask_of(session)
            assert header["BPSOURCE"] == "lights"
            # the hot pixels are in every light at one detector position; the stars move
            assert _hot_set((mask & 1) != 0) == {tuple(p) for p in HOT.tolist()}
            _assert_cold_is_ccdmask(session, mask)
            frame = session.get(Frame, master.frame_id)
            roles = _input_roles(session, frame)
            assert roles == {"light", "master_flat"}
            _assert_shifts_follow_the_drift(_shifts(session))
        # a light arriving later (archive watch runs the night again) is calibrated with that
        # mask: the mask is not remade, nor the lights calibrated before
        folder = tmp_path / "imaging" / "2026-11-20"
        image = (
            520
            + 1000
            + _stars(3.1 * 8, -2.3 * 8)
            + np.random.default_rng(9).normal(0, 10, SHAPE)
        )
        image[HOT[:, 0], HOT[:, 1]] += 2000
        _write(folder / "m31_8.fits", "LIGHT", 60.0, 28, image)
        again = _archive_night(tmp_path, db_url)
        assert "1 calibrated" in again.output, again.output
        with session_scope(engine) as session:
            assert _mask_of(session)[0].frame_id == master.frame_id
            assert not [p for p in find_stale(session) if p.step == "calibrate"]
    finally:
        engine.dispose()


def test_a_mask_made_from_a_master_marked_bad_is_not_selected(db_url, tmp_path):
    _run_night(tmp_path, db_url)
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            dark = session.scalars(select(Master).where(Master.kind == "dark")).one()
            assert not find_stale(session)
        result = CliRunner().invoke(
            main,
            [
                "--db",
                db_url,
                "masters",
                "mark-bad",
                str(dark.frame_id),
                "--reason",
                "light leak",
            ],
            env=_env(tmp_path),
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        with session_scope(engine) as session:
            light = session.scalars(
                select(Frame).where(Frame.image_type == "light")
            ).first()
            selection = explain_selection(session, light, "badpix")
            assert not selection.found and "made from master" in selection.explanation
            stale = [p for p in find_stale(session) if p.step == "calibrate"]
            assert len(stale) == len(DRIFT)
            assert all(
                any("badpix master" in r and "marked bad" in r for r in p.reasons)
                for p in stale
            )
    finally:
        engine.dispose()


def test_a_bayer_mosaic_is_judged_per_channel():
    """SYNTHETIC: channels at 1000, 3000, 3000 and 400 ADU; hot pixels of +300 ADU in the
    faint channel are lost in the whole image's spread but found in their channel's."""
    rng = np.random.default_rng(8)
    image = np.empty((128, 128))
    for (rows, cols), level in zip(
        channels(image.shape, "RGGB"), (1000, 3000, 3000, 400)
    ):
        image[rows, cols] = level + rng.normal(0, 10, (64, 64))
    hot = [(3, 5), (41, 99), (97, 13)]  # odd rows and columns: the blue channel of RGGB
    for y, x in hot:
        image[y, x] += 300
    assert not hot_pixels(image, 6.0).any()  # mono: the channels' levels swamp them
    assert _hot_set(hot_pixels(image, 6.0, "RGGB")) == set(hot)
    flat = np.ones((128, 128)) + rng.normal(0, 0.005, (128, 128))
    flat[:, 1::2] *= 1.6  # green and blue twice as sensitive as red and green
    flat[:, 40] = 0.02  # a dead column of the red and green channels
    assert not cold_pixels(
        flat, None
    ).any()  # mono: the channels' pattern hides the column
    cold = cold_pixels(flat, None, "RGGB")
    assert (
        cold[:, 40].all() and cold.sum() - 128 <= 2
    )  # (ccdmask flags a noise pixel or so besides)
    lights = light_outliers(image, 6.0, 5, "RGGB")
    assert set(hot) <= _hot_set(lights)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request


def test_the_arcsat_night_registers_alike_with_and_without_darks(backend, tmp_path):
    """REAL: without darks, the mask from the lights keeps the hot pixels out of star
    detection; the registered shifts agree with the run with darks within 1 px."""
    night = SHARED_DATA / "arcsat-uw-astr480" / "data" / "20250601"
    shifts, sources = {}, {}
    for name, keep in (
        ("with", lambda p: True),
        ("without", lambda p: "dark" not in p.name.lower()),
    ):
        base = tmp_path / name
        folder = base / "imaging" / "2025-06-01"
        folder.mkdir(parents=True)
        for path in night.iterdir():
            if path.is_file() and path.suffix == ".fits" and keep(path):
                shutil.copy2(path, folder / path.name)
        config = base / "config.toml"
        config.write_text(f'[masters]\nlibrary = "{base / "masters"}"\n')
        with catalogue_url(backend, base) as url:
            result = CliRunner().invoke(
                main,
                [
                    "-q",
                    "--db",
                    url,
                    "night",
                    "2025-06-01",
                    "--root",
                    str(base / "imaging"),
                    "--output",
                    str(base / "out"),
                    "--workers",
                    "2",
                    "--no-measure",
                ],
                env={"ARCHIVE_CONFIG": str(config)},
                catch_exceptions=False,
            )
            assert result.exit_code == 0, result.output
            engine = open_catalogue(url)
            try:
                with session_scope(engine) as session:
                    _, mask, header = _mask_of(session)
                    sources[name] = (
                        header["BPSOURCE"],
                        int(np.count_nonzero(mask & 1)),
                    )
                    rows = session.scalars(
                        select(Reduction).where(
                            Reduction.step == "register", Reduction.status == "done"
                        )
                    ).all()
                    ids = {int(r.lineage.split(":")[1]): r for r in rows}
                    names = canonical_paths(session, list(ids))
                    shifts[name] = {
                        names[i].rsplit("/", 1)[-1]: (r.results["dx"], r.results["dy"])
                        for i, r in ids.items()
                    }
                    calibrated = session.scalars(
                        select(Frame).where(Frame.image_type == "calibrated")
                    ).first()
                    with fits.open(
                        canonical_paths(session, [calibrated.id])[calibrated.id]
                    ) as hdul:
                        assert np.isnan(hdul[0].data).sum() == np.count_nonzero(mask)
            finally:
                engine.dispose()
    assert sources["with"][0] == "darks" and sources["without"][0] == "lights"
    assert (
        sources["with"][1] > 100 and sources["without"][1] > 100
    )  # a camera with many hot pixels
    with_, without = shifts["with"], shifts["without"]
    assert (
        with_.keys() == without.keys() and len(with_) >= 15
    )  # each light, by its file name
    assert max(abs(a) + abs(b) for a, b in with_.values()) > 2  # the night drifts
    for light, (a, b) in with_.items():
        c, d = without[light]
        assert abs(a - c) <= 1 and abs(b - d) <= 1, (light, (a, b), (c, d))
