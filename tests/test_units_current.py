"""Units and current products (issue 10 parts 7 and 8), on both backends, with real frames.

* seestar-s50-m94 (two units of one model, serials in TELESCOP): two instruments of one
  model; a master dark of one unit (SYNTHETIC darks: the real header of a unit-1 light with
  IMAGETYP 'Dark', pixels written here) never calibrates the other unit's lights; one stack of
  M 94 from both units, catalogued as the model.
* arcsat-2019-m13-griz (bias, 80 s darks, flats in four filters): each light takes its own
  filter's flat and the 80 s dark scaled; products in two product folders; the master dark
  marked bad, ``reduce --stale`` and then ``stale`` lists nothing; copyback and project collect
  take only current products; collect gathers the master bias below the bias-subtracted dark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import select

from archive.cli import main
from archive.db import Copy, Frame, session_scope
from archive.db.models import (
    CalibrationSelection,
    Instrument,
    Master,
    Reduction,
    ReductionInput,
)
from archive.db.provenance import masters_below

SEESTAR_UNIT1 = "S50_1d3fe189"  # session2
SEESTAR_UNIT2 = "S50_12d98769"  # session3


def run(db_url: str, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(
        main, ["--db", db_url, "-q", *args], catch_exceptions=False
    )
    if ok:
        assert result.exit_code == 0, result.output
    return result.output


def _calibrated_selections(
    session,
) -> dict[int, dict[str, tuple[int | None, str, float | None]]]:
    """light id -> kind -> (master, method, scale) of each light's current calibrated frame."""
    from archive.reduce.registration import current_calibrated

    out: dict[int, dict] = {}
    for light_id, (_, rid) in current_calibrated(session).items():
        rows = session.scalars(
            select(CalibrationSelection).where(CalibrationSelection.reduction_id == rid)
        )
        out[light_id] = {r.kind: (r.master_id, r.method, r.scale) for r in rows}
    return out


# -- two units of one model ------------------------------------------------------------------------


@pytest.fixture
def seestar(shared_data, tmp_path) -> Path:
    """Two lights of each unit, and three SYNTHETIC 10 s darks of unit 1 (its real header)."""
    root = tmp_path / "seestar"
    for session in ("session2", "session3"):
        for path in sorted((shared_data / "seestar-s50-m94" / session).glob("*.fit"))[
            :2
        ]:
            (root / session).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / session / path.name)
    first = min((root / "session2").glob("*.fit"))
    header = fits.getheader(first)
    rng = np.random.default_rng(7)
    (root / "darks").mkdir()
    for k in range(3):
        h = header.copy()
        h["IMAGETYP"] = "Dark"
        h["DATE-OBS"] = f"2025-03-27T05:50:{10 * k:02d}.000"
        data = (40 + rng.poisson(5.0, size=(h["NAXIS2"], h["NAXIS1"]))).astype(
            np.int32
        ) - 32768
        fits.writeto(root / "darks" / f"Dark_10.0s_{k}.fit", data.astype(np.int16), h)
    return root


def test_two_units_are_two_instruments_that_share_no_masters_but_one_stack(
    db_url, engine, seestar, tmp_path
):
    run(db_url, "ingest", str(seestar))
    with session_scope(engine) as session:
        units = {
            i.serial: (i.name, i.model) for i in session.scalars(select(Instrument))
        }
    assert units == {
        SEESTAR_UNIT1: (f"Seestar S50 {SEESTAR_UNIT1}", "Seestar S50"),
        SEESTAR_UNIT2: (f"Seestar S50 {SEESTAR_UNIT2}", "Seestar S50"),
    }
    # --instrument takes the model (every unit) or one unit
    assert (
        run(
            db_url,
            "frames",
            "--type",
            "light",
            "--instrument",
            "seestar s50",
            "--format",
            "csv",
        ).count("\n")
        == 5
    )
    assert (
        run(
            db_url,
            "frames",
            "--type",
            "light",
            "--instrument",
            f"Seestar S50 {SEESTAR_UNIT2}",
            "--format",
            "csv",
        ).count("\n")
        == 3
    )

    run(db_url, "masters", "build", "--library", str(tmp_path / "library"))
    products = tmp_path / "products"
    run(db_url, "reduce", "--output", str(products), "--serial")
    with session_scope(engine) as session:
        unit = {
            f.id: f.instrument.serial
            for f in session.scalars(select(Frame).where(Frame.image_type == "light"))
        }
        dark = session.scalars(
            select(Frame).join(Master, Master.frame_id == Frame.id).where(Master.kind == "dark")
        ).one()
        assert dark.instrument.serial == SEESTAR_UNIT1
        chosen = _calibrated_selections(session)
        assert set(chosen) == set(
            unit
        )  # the Seestar requires no calibration (its model's rule)
        for light_id, serial in unit.items():
            dark_id = chosen[light_id].get("dark", (None,))[0]
            assert dark_id == (dark.id if serial == SEESTAR_UNIT1 else None), serial
        stacks = list(
            session.scalars(select(Frame).where(Frame.image_type == "stacked"))
        )
        assert len(stacks) == 1
        stack = stacks[0]
        assert (
            stack.instrument.name == "Seestar S50" and stack.instrument.serial is None
        )
        inputs = session.scalars(
            select(ReductionInput.frame_id).where(
                ReductionInput.reduction_id == stack.reduction_id
            )
        )
        assert {session.get(Frame, i).instrument.serial for i in inputs} == {
            SEESTAR_UNIT1,
            SEESTAR_UNIT2,
        }
    stack_path = next((products / "stacks").rglob("*.fits"))
    header = fits.getheader(stack_path)
    assert (
        header["NCOMBINE"] == 4 and header["NAXIS3"] == 3 and "TELESCOP" not in header
    )


# -- the stale cycle, current products, masters below ------------------------------------------------


@pytest.fixture
def m13(db_url, engine, shared_data, tmp_path):
    """The ARCSAT M13 night ingested, its masters built, the sdss_g lights reduced into one
    products folder and every light into another (two product folders)."""
    run(db_url, "ingest", str(shared_data / "arcsat-2019-m13-griz"))
    run(db_url, "masters", "build", "--library", str(tmp_path / "library"))
    run(
        db_url,
        "reduce",
        "--filter",
        "sdss_g",
        "--no-register",
        "--output",
        str(tmp_path / "night"),
        "--serial",
    )
    run(db_url, "reduce", "--output", str(tmp_path / "reduce"), "--serial")
    return tmp_path


def test_each_light_takes_its_filter_flat_and_the_80s_dark_scaled(engine, m13):
    with session_scope(engine) as session:
        masters = {
            (m.kind, f.filter_name): f
            for m, f in session.execute(
                select(Master, Frame).join(Frame, Frame.id == Master.frame_id)
            )
        }
        lights = {
            f.id: f
            for f in session.scalars(select(Frame).where(Frame.image_type == "light"))
        }
        chosen = _calibrated_selections(session)
        assert set(chosen) == set(lights)
        for light_id, kinds in chosen.items():
            light = lights[light_id]
            flat = masters[("flat", light.filter_name)]
            assert kinds["flat"][:2] == (flat.id, "exact"), light.filter_name
            dark = masters[("dark", None)]
            if light.exposure_time_s == 80.0:
                assert kinds["dark"][:2] == (dark.id, "exact")
            else:
                assert kinds["dark"][:2] == (dark.id, "scaled")
                assert kinds["dark"][2] == pytest.approx(light.exposure_time_s / 80.0)
            assert kinds["bias"][0] == masters[("bias", None)].id


def test_the_stale_cycle_closes_and_only_current_products_are_gathered(
    db_url, engine, m13
):
    with session_scope(engine) as session:
        dark = session.scalar(select(Frame.id).where(Frame.image_type == "master_dark"))
        bias = session.scalar(select(Frame.id).where(Frame.image_type == "master_bias"))
        assert masters_below(session, [dark]) == {
            bias
        }  # the bias-subtracted dark was made with it
        assert masters_below(session, [bias]) == set()
        before = set(
            session.scalars(select(Frame.id).where(Frame.image_type == "calibrated"))
        )
    # project collect before: every master the lights need, the bias below the dark included
    run(
        db_url,
        "project",
        "create",
        "m13",
        "--target",
        "M13",
        "--filters",
        "sdss_g",
        "--dir",
        str(m13 / "project"),
    )
    run(db_url, "project", "collect", "m13")
    kinds = sorted(
        p.name.split("_")[1] for p in (m13 / "project" / "masters" / "sdss_g").iterdir()
    )
    assert kinds == ["badpix", "bias", "dark", "flat"]  # the mask calibration applied to them too
    status = run(db_url, "project", "status", "m13", "--format", "csv")
    assert "sdss_g" in status and ",0.067," in status  # 2 x 120 s usable

    assert run(db_url, "stale").strip() in ("", "(no rows)")
    run(db_url, "masters", "mark-bad", str(dark), "--reason", "test: light leak")
    stale = run(db_url, "stale", "--format", "csv")
    calibrate = [line for line in stale.splitlines() if ",calibrate," in line]
    assert len(calibrate) == 12 and all(f"dark master #{dark} marked bad" in line for line in calibrate)
    assert "made from stale" in stale
    run(db_url, "reduce", "--stale", "--output", str(m13 / "reduce"), "--serial")
    assert run(db_url, "stale").strip() in ("", "(no rows)")  # the cycle closes

    with session_scope(engine) as session:
        calibrated = {
            f.id: f
            for f in session.scalars(
                select(Frame).where(Frame.image_type == "calibrated")
            )
        }
        old = {i: f for i, f in calibrated.items() if i in before}
        new = {i: f for i, f in calibrated.items() if i not in before}
        assert len(new) == 12 and all(f.superseded_by_id is None for f in new.values())
        assert all(
            f.superseded_by_id in new for f in old.values()
        )  # each replaced by its light's new frame
        for kinds in _calibrated_selections(session).values():
            assert (
                "dark" not in kinds or kinds["dark"][0] is None
            )  # the bad dark is used nowhere now
        stacks = list(
            session.scalars(select(Frame).where(Frame.image_type == "stacked"))
        )
        current = [s for s in stacks if s.superseded_by_id is None]
        assert (
            len(current) == 4 and len(stacks) == 8
        )  # the four stacks made again supersede the first four
        assert all(
            session.get(Reduction, f.reduction_id).lineage == f"calibrate:{light}"
            for light, f in (
                (
                    session.scalar(
                        select(ReductionInput.frame_id).where(
                            ReductionInput.reduction_id == f.reduction_id,
                            ReductionInput.role == "light",
                        )
                    ),
                    f,
                )
                for f in new.values()
            )
        )

    # copyback takes only current products: 12 calibrated frames, none made with the bad dark
    out = m13 / "copyback"
    run(db_url, "copyback", "--target", "M13", "--kind", "calibrated", "--to", str(out))
    copied = sorted(out.rglob("*.fits"))
    assert len(copied) == 12
    with session_scope(engine) as session:
        frames = set(
            session.scalars(select(Copy.frame_id).where(Copy.path.startswith(str(out))))
        )
        assert frames == set(new)

    # the dark good again: the first products are chosen again, current again, and nothing is stale
    run(db_url, "masters", "mark-bad", str(dark), "--undo")
    calibrate = [line for line in run(db_url, "stale", "--format", "csv").splitlines() if ",calibrate," in line]
    assert len(calibrate) == 12 and all("a dark master is now available" in line for line in calibrate)
    run(db_url, "reduce", "--stale", "--output", str(m13 / "reduce"), "--serial")
    assert run(db_url, "stale").strip() in ("", "(no rows)")
    with session_scope(engine) as session:
        again = {
            f.id: f.superseded_by_id
            for f in session.scalars(
                select(Frame).where(Frame.image_type == "calibrated")
            )
        }
        assert {
            i for i, by in again.items() if by is None
        } == before  # no product made a third time
        assert all(again[i] in before for i in new)


# -- LCO: one exposure twice, the compressed raw frame, and cubes of one plane ---------------------------


def test_lco_fits_and_fz_are_one_exposure_and_the_compressed_raw_frame_calibrates(
    db_url, engine, shared_data, tmp_path
):
    lco = shared_data / "lco-fz-ocs-archive"
    run(db_url, "ingest", str(lco))
    with session_scope(engine) as session:
        frames = {
            Path(path).name: frame
            for frame, path in session.execute(
                select(Frame, Copy.path).join(Copy, Copy.frame_id == Frame.id)
            )
        }
    plain, packed = (
        frames["coj1m011-kb05-20150219-0125-e90.fits"],
        frames["coj1m011-kb05-20150219-0125-e90.fits.fz"],
    )
    assert (
        packed.duplicate_of_id == plain.id and plain.duplicate_of_id is None
    )  # one exposure
    assert {f.image_type for f in frames.values()} == {
        "light"
    }  # OBSTYPE 'EXPOSE', OBJECT 'zero_pointing'
    raw = frames["cpt1m012-fl10-20151216-0073-e00.fits.fz"]
    assert raw.hdu_index == 1 and (raw.naxis1, raw.naxis2, raw.naxis3) == (
        1040,
        1024,
        1,
    )  # a cube of one plane
    assert (
        raw.gain is None
    )  # GAIN='[3.3,3.4,3.3,3.4]': one value per amplifier, not one gain

    run(
        db_url,
        "reduce",
        "--no-register",
        "--output",
        str(tmp_path / "products"),
        "--serial",
    )
    product = next((tmp_path / "products").rglob("cpt1m012-fl10-*_cal.fits"))
    with fits.open(lco / "cpt1m012-fl10-20151216-0073-e00.fits.fz") as hdul:
        expected = hdul[1].data[0].astype(np.float64)
    with fits.open(product) as hdul:
        assert (
            hdul[0].header["NAXIS"] == 2 and hdul[0].header["OBJECT"] == "zero_pointing"
        )  # primary header inherited
        # no master: the pixels as read, as float, the one plane as a 2-D image
        np.testing.assert_allclose(hdul[0].data, expected, rtol=1e-6)


def test_a_cube_of_one_plane_is_read_as_that_plane(db_url, engine, tmp_path):
    """SYNTHETIC: NAXIS3 = 1 lights (a mono frame written as a cube) and darks; the master dark
    and the calibrated frames are 2-D."""
    from tests.factories import nina_header, write_fits

    rng = np.random.default_rng(3)
    for k in range(3):
        when = {"DATE-OBS": f"2026-11-19T22:0{k}:00"}
        write_fits(
            tmp_path / "raw" / f"cube_{k}.fits",
            nina_header(OBJECT="Cube", FILTER="L", **when),
            data=(1000 + rng.normal(0, 10, (1, 32, 48))).astype(np.float32),
        )
        write_fits(
            tmp_path / "raw" / f"dark_{k}.fits",
            nina_header("DARK", OBJECT="", FILTER="", **when),
            data=(100 + rng.normal(0, 1, (1, 32, 48))).astype(np.float32),
        )
    run(db_url, "ingest", str(tmp_path / "raw"))
    run(db_url, "masters", "build", "--library", str(tmp_path / "library"))
    run(
        db_url,
        "reduce",
        "--no-register",
        "--output",
        str(tmp_path / "products"),
        "--serial",
    )
    master = next((tmp_path / "library").rglob("*.fits"))
    assert fits.getdata(master).shape == (32, 48)
    calibrated = sorted((tmp_path / "products").rglob("*_cal.fits"))
    assert len(calibrated) == 3
    raw = fits.getdata(tmp_path / "raw" / "cube_0.fits")[0]
    first = fits.getdata(calibrated[0])
    assert (
        first.shape == (32, 48)
        and abs(float(np.median(first)) - (float(np.median(raw)) - 100)) < 3
    )
