"""Dark ladders (issue 10 part 6): a per-pixel dark-current model fitted over darks of several
exposures, too few at each for a master dark. Every test runs on SQLite and PostgreSQL.

The data are SYNTHESIZED here (tests/factories.py writes real FITS files): a N.I.N.A.-style
CMOS camera with a known per-pixel bias pattern and a known per-pixel dark current (hot
pixels included), Gaussian read noise; five biases, a dark ladder of two frames each at 5, 30,
60, 120, 180 and 240 s, and lights at 90 s (within the ladder) and 300 s (outside it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import select

from archive.calib import build_masters, explain_selection, select_masters
from archive.calib.ladder import fit_dark_model
from archive.cli import main
from archive.db import Frame, session_scope
from archive.db.models import (
    CalibrationSelection,
    Copy,
    Master,
    Reduction,
    ReductionInput,
)
from archive.ingest.ingest import ingest_paths
from tests.factories import nina_header, write_fits

SHAPE = (24, 20)
LADDER = (5.0, 30.0, 60.0, 120.0, 180.0, 240.0)
READ_NOISE = 2.0
SKY = 300.0
START = dt.datetime(2026, 11, 20, 18, 0, 0)


def _truth():
    rng = np.random.default_rng(10)
    bias = 1000.0 + rng.normal(0.0, 4.0, SHAPE)  # fixed pattern
    current = rng.uniform(0.2, 2.0, SHAPE)  # ADU/s
    current[3, 4], current[10, 15], current[20, 2] = 15.0, 22.0, 9.0  # hot pixels
    return bias, current


def _frame(
    path: Path, kind: str, exposure: float, when: dt.datetime, data: np.ndarray
) -> Path:
    header = nina_header(
        kind,
        EXPTIME=exposure,
        EXPOSURE=exposure,
        **{
            "DATE-OBS": when.isoformat(timespec="milliseconds"),
            "DATE-LOC": when.isoformat(timespec="milliseconds"),
        },
    )
    return write_fits(
        path, header, data=np.clip(np.round(data), 0, 65535).astype(np.uint16)
    )


def _night(root: Path, exposures: tuple[float, ...] = (90.0, 300.0)) -> dict[str, Path]:
    """Biases, the dark ladder (two each at 5 ... 240 s) and lights (default 90 s and 300 s)."""
    bias, current = _truth()
    rng = np.random.default_rng(11)
    when = START
    for i in range(5):
        _frame(
            root / f"bias_{i}.fits",
            "BIAS",
            0.0,
            when,
            bias + rng.normal(0, READ_NOISE, SHAPE),
        )
        when += dt.timedelta(minutes=1)
    for t in LADDER:
        for i in range(2):
            _frame(
                root / f"dark_{t:g}s_{i}.fits",
                "DARK",
                t,
                when,
                bias + current * t + rng.normal(0, READ_NOISE, SHAPE),
            )
            when += dt.timedelta(minutes=5)
    lights = {}
    for t in exposures:
        when += dt.timedelta(hours=1)
        lights[f"{t:g}"] = _frame(
            root / f"light_{t:g}s.fits",
            "LIGHT",
            t,
            when,
            bias + current * t + SKY + rng.normal(0, READ_NOISE, SHAPE),
        )
    return lights


def _id(session, path: Path) -> int:
    return session.scalar(select(Copy.frame_id).where(Copy.path == str(path)))


def _cli(db_url, *args, code=0):
    result = CliRunner().invoke(main, ["--db", db_url, "-q", *args])
    assert result.exit_code == code, result.output + str(result.exception)
    return result.output


def test_fit_dark_model_is_the_least_squares_line():
    """The closed form equals numpy's polyfit over the frames, pixel by pixel."""
    rng = np.random.default_rng(3)
    t = np.array([5.0, 30.0, 60.0, 240.0])
    images = [rng.normal(10 + 2 * ti, 1.0, (3, 4)) for ti in t]
    slope, intercept = fit_dark_model(list(t), iter(images), [2.0, 1.0, 1.0, 3.0])
    stacked = np.stack(images).reshape(len(t), -1)
    expected = np.polyfit(t, stacked, 1, w=np.sqrt([2.0, 1.0, 1.0, 3.0]))
    np.testing.assert_allclose(slope.ravel(), expected[0], rtol=1e-10)
    np.testing.assert_allclose(intercept.ravel(), expected[1], rtol=1e-10)
    with pytest.raises(ValueError, match="two distinct exposures"):
        fit_dark_model([60.0, 60.0], iter(images[:2]), [1.0, 1.0])


def test_dark_ladder_gives_a_model_that_calibrates_lights_within_its_range(
    db_url, tmp_path
):
    """The synthesized ladder gives no master dark but one dark_model master (slope, INTERCEPT,
    DKTMIN/DKTMAX, provenance); the 90 s light is calibrated with it and its dark-subtracted
    pixels match the truth within the noise (checked against an independent numpy fit); the
    explanation names the model; the 300 s light, outside the ladder, does not take it."""
    root = tmp_path / "night"
    lights = _night(root)
    _, current = _truth()
    library = tmp_path / "library"
    from archive.db.session import open_catalogue

    engine = open_catalogue(db_url)
    try:
        ingest_paths(engine, [root])
        summary = build_masters(engine, library=library)
        assert summary.failed == []
        assert sorted(kind for kind, _, _ in summary.built) == ["bias", "dark_model"]
        assert sorted(n for kind, _, n in summary.too_small if kind == "dark") == [
            2
        ] * len(LADDER)  # no master dark
        model_id, model_path = next(
            (fid, Path(p)) for kind, fid, p in summary.built if kind == "dark_model"
        )

        # the product: slope (ADU/s) in the primary HDU, the intercept in an extension, the range
        with fits.open(model_path) as hdul:
            slope, intercept, header = (
                hdul[0].data.astype(float),
                hdul["INTERCEPT"].data.astype(float),
                hdul[0].header,
            )
        assert header["IMAGETYP"] == "MASTER DARK MODEL" and header["BIASSUB"] is True
        assert (header["DKTMIN"], header["DKTMAX"]) == (5.0, 240.0)
        assert np.abs(slope - current).max() < 0.05  # ADU/s, hot pixels included
        assert np.abs(intercept).max() < 5.0

        with session_scope(engine) as session:
            master = session.get(Master, model_id)
            assert (
                master.kind == "dark_model"
                and master.origin == "built"
                and master.bias_subtracted
            )
            assert master.n_combined == 2 * len(LADDER)
            frame = session.get(Frame, model_id)
            assert frame.image_type == "master_dark_model"
            reduction = session.get(Reduction, frame.reduction_id)
            assert reduction.step == "master_dark_model" and reduction.status == "done"
            assert reduction.parameters["exposures_s"] == list(LADDER)
            roles = session.scalars(
                select(ReductionInput.role).where(
                    ReductionInput.reduction_id == reduction.id
                )
            ).all()
            assert roles.count("raw") == 12 and roles.count("master_bias") == 1

            light90 = session.get(Frame, _id(session, lights["90"]))
            light300 = session.get(Frame, _id(session, lights["300"]))
            sel = explain_selection(session, light90, "dark")
            assert (sel.method, sel.master_id, sel.weights) == (
                "model",
                model_id,
                [(model_id, 90.0)],
            )
            assert "dark model" in sel.explanation and "5-240 s" in sel.explanation
            outside = explain_selection(session, light300, "dark")
            assert not outside.found and "exposure_range" in outside.explanation
            bulk = select_masters(
                session, [light90.id, light300.id], ["dark"]
            )  # the set-based path agrees
            assert (
                bulk[(light90.id, "dark")].method == "model"
                and not bulk[(light300.id, "dark")].found
            )

        # rebuilding is a no-op
        again = build_masters(engine, library=library)
        assert again.built == [] and again.unchanged == 2
    finally:
        engine.dispose()

    explained = _cli(
        db_url, "masters", "select", str(lights["90"]), "--kind", "dark", "--explain"
    )
    assert f"dark model {model_id}" in explained and "rank 1 (model)" in explained
    explained = _cli(
        db_url,
        "masters",
        "select",
        str(lights["300"]),
        "--kind",
        "dark",
        "--explain",
        code=1,
    )
    assert "removed by exposure_range" in explained

    out = tmp_path / "products"
    result = CliRunner().invoke(
        main,
        ["--db", db_url, "reduce", "--no-register", "--serial", "--output", str(out)],
    )
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            light90 = _id(session, lights["90"])
            reduction = session.scalar(
                select(Reduction).where(
                    Reduction.step == "calibrate", Reduction.status == "done"
                )
            )
            assert reduction is not None, result.output
            rows = session.scalars(
                select(CalibrationSelection).where(
                    CalibrationSelection.reduction_id == reduction.id
                )
            ).all()
            dark = next(r for r in rows if r.kind == "dark")
            assert (dark.frame_id, dark.method, dark.master_id) == (
                light90,
                "model",
                model_id,
            )
            product = session.scalar(
                select(Frame.id).where(Frame.reduction_id == reduction.id)
            )
            calibrated = Path(
                session.scalar(
                    select(Copy.path).where(Copy.frame_id == product, Copy.is_current)
                )
            )
            assert calibrated.is_relative_to(out)
    finally:
        engine.dispose()
    # the 300 s light requires a dark (the instrument has darks) and none serves it: reported
    assert result.exit_code == 1 and "no master dark (required)" in result.output
    data, cal_header = fits.getdata(calibrated, header=True)
    assert cal_header["DARKMETH"] == "model" and model_path.name in cal_header["MDARK"]

    # independently: the master bias, a numpy fit of the bias-subtracted ladder, the light
    raw = {
        t: [
            fits.getdata(root / f"dark_{t:g}s_{i}.fits").astype(float) for i in range(2)
        ]
        for t in LADDER
    }
    master_bias = np.median(
        [fits.getdata(root / f"bias_{i}.fits").astype(float) for i in range(5)], axis=0
    )
    steps = np.stack([np.mean(raw[t], axis=0) - master_bias for t in LADDER]).reshape(
        len(LADDER), -1
    )
    fit_slope, fit_intercept = np.polyfit(np.array(LADDER), steps, 1)
    light = fits.getdata(lights["90"]).astype(float)
    expected = light - master_bias - (fit_intercept + 90.0 * fit_slope).reshape(SHAPE)
    np.testing.assert_allclose(data, expected, atol=0.02)
    # and the truth: sky only, within the noise (hot pixels gone)
    residual = data - SKY
    noise = READ_NOISE * np.sqrt(1 + 1 / 5)
    assert abs(residual.mean()) < 4 * noise / np.sqrt(residual.size)
    assert residual.std() < 1.3 * noise and np.abs(residual).max() < 6 * noise
    assert (
        np.abs(data[3, 4] - SKY) < 6 * noise and np.abs(data[10, 15] - SKY) < 6 * noise
    )


def test_archive_night_builds_the_model_and_calibrates_with_it(db_url, tmp_path):
    """``archive night`` on the synthesized ladder (one 90 s light): the dark model is built
    with the night's masters and the light calibrated with it; ``masters list`` shows it."""
    root = tmp_path / "imaging"
    _night(root / "2026-11-20_ladder", exposures=(90.0,))
    config = tmp_path / "config.toml"
    config.write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {"ARCHIVE_CONFIG": str(config)}
    out = tmp_path / "reduced"
    args = [
        "-q",
        "--db",
        db_url,
        "night",
        "2026-11-20",
        "--root",
        str(root),
        "--output",
        str(out),
        "--serial",
    ]
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    models = list((tmp_path / "masters").rglob("dark_model/*.fits"))
    assert len(models) == 1
    calibrated = [
        p
        for p in out.rglob("*.fits")
        if fits.getheader(p).get("IMAGETYP") == "CALIBRATED"
    ]
    assert len(calibrated) == 1
    header = fits.getheader(calibrated[0])
    assert header["DARKMETH"] == "model" and header["MDARK"] == models[0].name
    listed = CliRunner().invoke(
        main,
        ["--db", db_url, "masters", "list", "--kind", "dark_model", "--format", "csv"],
        env=env,
    )
    rows = listed.output.strip().splitlines()[1:]
    assert (
        listed.exit_code == 0 and len(rows) == 1 and ",dark_model,built," in rows[0]
    ), listed.output


def test_a_master_flat_takes_the_dark_model(engine, tmp_path):
    """Synthesized flats of 10 s (within the ladder) next to the ladder: the master flat is
    built with the dark model evaluated at 10 s (its selection says 'model'), so the hot
    pixels (up to 220 ADU of dark in 10 s) leave no trace in the normalized flat."""
    root = tmp_path / "night"
    _night(root, exposures=())
    bias, current = _truth()
    response = 1.0 + 0.05 * np.sin(np.arange(SHAPE[1]) / 3.0)[None, :] * np.ones(SHAPE)
    rng = np.random.default_rng(12)
    when = START + dt.timedelta(hours=3)
    for i in range(3):
        data = (
            bias
            + current * 10.0
            + 10000.0 * response
            + rng.normal(0, READ_NOISE, SHAPE)
        )
        _frame(
            root / f"flat_{i}.fits", "FLAT", 10.0, when + dt.timedelta(minutes=i), data
        )
    ingest_paths(engine, [root])
    summary = build_masters(engine, library=tmp_path / "library")
    assert summary.failed == []
    built = {kind: (fid, Path(p)) for kind, fid, p in summary.built}
    assert sorted(built) == ["bias", "dark_model", "flat"]
    with session_scope(engine) as session:
        reduction_id = session.get(Frame, built["flat"][0]).reduction_id
        dark = session.scalar(
            select(CalibrationSelection).where(
                CalibrationSelection.reduction_id == reduction_id,
                CalibrationSelection.kind == "dark",
            )
        )
        assert (dark.method, dark.master_id) == ("model", built["dark_model"][0])
        roles = session.scalars(
            select(ReductionInput.role).where(
                ReductionInput.reduction_id == reduction_id
            )
        ).all()
        assert sorted(set(roles)) == ["master_bias", "master_dark", "raw"]
    flat = fits.getdata(built["flat"][1]).astype(float)
    truth = response / np.median(response)
    assert (
        np.abs(flat - truth).max() < 2e-3
    )  # an unsubtracted hot pixel would be 1-2 % high
