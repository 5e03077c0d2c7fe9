"""The master calibration library: building masters from real and synthetic frames, selecting
them, the library's flags, and the command line. Every database test runs on SQLite and
PostgreSQL (the ``engine`` / ``db_url`` fixtures)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import func, select

from archive.errors import CalibrationNotFoundError
from archive.calib import (
    RuleBook, build_masters, combine_files, explain_selection, mark_bad,
    missing_calibrations, record_selection, select_master, select_masters, set_validity,
)
from archive.calib.combine import rows_per_block
from archive.cli import main
from archive.db import Frame, session_scope
from archive.db.models import CalibrationSelection, Copy, Master, Reduction, ReductionInput
from archive.ingest.ingest import ingest_paths
from archive.ingest.library import sync_library
from tests.factories import nina_header, write_fits


def _paths(session, frame_ids):
    return dict(session.execute(select(Copy.frame_id, Copy.path).where(Copy.frame_id.in_(frame_ids), Copy.is_current)).all())


def _raw_paths(session, image_type):
    ids = session.scalars(select(Frame.id).where(Frame.image_type == image_type).order_by(Frame.date_obs_s)).all()
    paths = _paths(session, ids)
    return [paths[i] for i in ids]


# -- the real ARCSAT night ---------------------------------------------------------------------


def test_arcsat_night_masters(engine, arcsat_night, copy_tree, tmp_path):
    night = copy_tree(arcsat_night, "night")
    ingest_paths(engine, [night])
    library = tmp_path / "library"
    summary = build_masters(engine, library=library)
    assert summary.failed == [] and summary.too_small == []
    assert sorted(k for k, _, _ in summary.built) == ["bias", "dark", "flat"]
    built = {kind: frame_id for kind, frame_id, _ in summary.built}
    for _, _, path in summary.built:
        assert Path(path).is_file() and Path(path).is_relative_to(library)
        assert not list(Path(path).parent.glob(".*.part"))  # written under a temporary name, renamed

    with session_scope(engine) as session:
        biases = [fits.getdata(p).astype(np.float64) for p in _raw_paths(session, "bias")]
        assert len(biases) == 5
        bias_path = _paths(session, [built["bias"]])[built["bias"]]
        master_bias = fits.getdata(bias_path)
        np.testing.assert_array_equal(master_bias, np.median(np.stack(biases), axis=0))

        darks = [fits.getdata(p).astype(np.float64) for p in _raw_paths(session, "dark")]
        master_dark = fits.getdata(_paths(session, [built["dark"]])[built["dark"]])
        expected = np.median(np.stack(darks) - master_bias, axis=0)
        np.testing.assert_allclose(master_dark, expected, atol=1e-3)

        master_flat = fits.getdata(_paths(session, [built["flat"]])[built["flat"]])
        assert np.median(master_flat) == pytest.approx(1.0, abs=1e-6)

        # ingested as frames of their own, typed, linked to their reduction and inputs
        for kind, frame_id in built.items():
            frame = session.get(Frame, frame_id)
            assert frame.image_type == f"master_{kind}"
            assert frame.duplicate_of_id is None
            reduction = session.get(Reduction, frame.reduction_id)
            assert reduction.step == f"master_{kind}" and reduction.status == "done"
            assert {"archive", "astropy", "ccdproc", "numpy"} <= set(reduction.software)
            roles = session.execute(select(ReductionInput.role, func.count()).where(
                ReductionInput.reduction_id == reduction.id).group_by(ReductionInput.role)).all()
            assert dict(roles)["raw"] == 5
            master = session.get(Master, frame_id)
            assert master.n_combined == 5 and master.origin == "built"
        assert session.get(Master, built["dark"]).bias_subtracted
        dark_roles = session.scalars(select(ReductionInput.role).where(
            ReductionInput.reduction_id == session.get(Frame, built["dark"]).reduction_id)).all()
        assert "master_bias" in dark_roles
        header = fits.getheader(_paths(session, [built["dark"]])[built["dark"]])
        assert header["NCOMBINE"] == 5 and header["IMAGETYP"] == "MASTER DARK"
        assert sum("input" in str(h) for h in header["HISTORY"]) == 5

        # every light selects them: the one-by-one and the set-based paths agree
        lights = session.scalars(select(Frame).where(Frame.image_type == "light")).all()
        assert len(lights) == 17
        bulk = select_masters(session, [f.id for f in lights])
        for light in lights:
            for kind in ("bias", "dark", "flat"):
                one = select_master(session, light, kind)
                assert one.master_id == built[kind] == bulk[(light.id, kind)].master_id
                assert one.method == bulk[(light.id, kind)].method
        short = next(f for f in lights if f.exposure_time_s == 30.0)
        dark = select_master(session, short, "dark")
        assert dark.method == "scaled" and dark.scale == pytest.approx(0.5)

    # rebuilding with the same inputs and rules is a no-op
    again = build_masters(engine, library=library)
    assert again.built == [] and again.unchanged == 3
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Reduction)) == 3
        assert session.scalar(select(func.count()).select_from(Master)) == 3


# -- synthetic nights over several weeks (SYNTHETIC data written by the test) -----------------

INSTRUMENT = "ZWO ASI2600MM Pro"
BASE = dt.datetime(2026, 3, 2, 20, 0, 0)


def _write(root: Path, name: str, image_type: str, when: dt.datetime, *, exposure: float, temp: float = -10.0,
           filter_name: str | None = "Ha", value: float = 1000.0, seed: int = 0, **extra) -> Path:
    header = nina_header(
        image_type, **{"DATE-OBS": when.isoformat(timespec="milliseconds"),
                       "DATE-LOC": (when + dt.timedelta(hours=1)).isoformat(timespec="milliseconds"),
                       "EXPTIME": exposure, "EXPOSURE": exposure, "SET-TEMP": temp, "CCD-TEMP": temp + 0.1,
                       "FILTER": filter_name or "", "OBJECT": "M 31" if image_type == "LIGHT" else ""}, **extra,
    )
    return write_fits(root / name, header, value=value, seed=seed, shape=(12, 10))


def synthetic_weeks(root: Path) -> None:
    """SYNTHETIC: three calibration nights a week apart (days 0, 7, 14) at -10 C: 3 biases,
    3 darks of 60 s and of 120 s, 3 Ha flats; on day 14 also 3 biases and 60 s darks at -20 C."""
    seed = 0
    for day in (0, 7, 14):
        start = BASE + dt.timedelta(days=day)
        for i in range(3):
            seed += 1
            _write(root, f"d{day}/bias_{i}.fits", "BIAS", start + dt.timedelta(minutes=i), exposure=0.0, seed=seed)
            for exposure in (60.0, 120.0):
                seed += 1
                _write(root, f"d{day}/dark_{exposure:g}_{i}.fits", "DARK", start + dt.timedelta(minutes=10 + 2 * i + exposure / 120),
                       exposure=exposure, value=1000 + exposure, seed=seed)
            seed += 1
            _write(root, f"d{day}/flat_ha_{i}.fits", "FLAT", start + dt.timedelta(minutes=30 + i), exposure=2.0,
                   value=20000 + 100 * i, seed=seed)
    start = BASE + dt.timedelta(days=14, hours=2)
    for i in range(3):
        seed += 1
        _write(root, f"cold/bias_{i}.fits", "BIAS", start + dt.timedelta(minutes=i), exposure=0.0, temp=-20.0, seed=seed)
        seed += 1
        _write(root, f"cold/dark_60_{i}.fits", "DARK", start + dt.timedelta(minutes=5 + i), exposure=60.0, temp=-20.0,
               value=1030, seed=seed)


@pytest.fixture
def synthetic(engine, tmp_path):
    root = tmp_path / "synthetic"
    synthetic_weeks(root)
    ingest_paths(engine, [root])
    summary = build_masters(engine, library=tmp_path / "library")
    assert summary.failed == []
    return engine, root, summary


def _light(engine, root, name, when, **kw) -> int:
    path = _write(root, f"lights/{name}.fits", "LIGHT", when, seed=hash(name) % 10000, **kw)
    ingest_paths(engine, [path])
    with session_scope(engine) as session:
        return session.scalar(select(Copy.frame_id).where(Copy.path == str(path.absolute())))


def test_synthetic_build_groups(synthetic):
    engine, _, summary = synthetic
    kinds = sorted(k for k, _, _ in summary.built)
    # 3 nights x (bias, dark 60, dark 120, flat) + the cold night's bias and 60 s dark
    assert kinds == ["bias"] * 4 + ["dark"] * 7 + ["flat"] * 3
    with session_scope(engine) as session:
        cold_dark = session.scalars(select(Frame).join(Master, Master.frame_id == Frame.id).where(
            Master.kind == "dark", Frame.set_temp_c == -20.0)).one()
        inputs = session.scalars(select(ReductionInput.frame_id).where(
            ReductionInput.reduction_id == cold_dark.reduction_id, ReductionInput.role == "master_bias")).all()
        bias = session.get(Frame, inputs[0])
        assert bias.set_temp_c == -20.0  # the cold dark used the cold bias: same rules as selection


def test_synthetic_selection_edge_cases(synthetic):
    engine, root, _ = synthetic
    near_day7 = _light(engine, root, "day8", BASE + dt.timedelta(days=8, hours=3), exposure=120.0)
    short = _light(engine, root, "short", BASE + dt.timedelta(days=7, hours=3), exposure=30.0)
    long_ = _light(engine, root, "long", BASE + dt.timedelta(days=7, hours=3), exposure=300.0)
    cold = _light(engine, root, "cold", BASE + dt.timedelta(days=14, hours=3), exposure=60.0, temp=-20.0)
    warm = _light(engine, root, "warm", BASE + dt.timedelta(days=7, hours=3), exposure=60.0, temp=0.0)
    sii = _light(engine, root, "sii", BASE + dt.timedelta(days=7, hours=3), exposure=60.0, filter_name="SII")
    late = _light(engine, root, "late", BASE + dt.timedelta(days=60), exposure=60.0)
    with session_scope(engine) as session:
        def pick(fid, kind):
            return explain_selection(session, session.get(Frame, fid), kind)

        day7 = BASE + dt.timedelta(days=7)
        for kind in ("bias", "dark", "flat"):
            chosen = session.get(Frame, pick(near_day7, kind).master_id)
            assert abs(chosen.date_obs - day7) < dt.timedelta(hours=2), kind  # nearest in time
        assert pick(near_day7, "dark").method == "exact"

        scaled = pick(short, "dark")
        assert scaled.method == "scaled" and scaled.scale == pytest.approx(0.5)
        assert session.get(Frame, scaled.master_id).exposure_time_s == 60.0  # the nearest LONGER one

        interp = pick(long_, "dark")
        assert interp.method == "interpolated"
        weights = dict(interp.weights)
        exposures = {mid: session.get(Frame, mid).exposure_time_s for mid in weights}
        assert sorted(exposures.values()) == [60.0, 120.0]
        assert sum(weights.values()) == pytest.approx(1.0)  # B passes through
        assert sum(w * exposures[m] for m, w in weights.items()) == pytest.approx(300.0)  # A*t at t = 300 s

        assert pick(cold, "bias").found and session.get(Frame, pick(cold, "bias").master_id).set_temp_c == -20.0
        cold_flat = pick(cold, "flat")
        assert not cold_flat.found and "tolerance:set_temp_c" in cold_flat.explanation
        assert "'tolerance:set_temp_c' removed the last" in pick(warm, "dark").explanation
        assert "'exact:filter_name' removed the last" in pick(sii, "flat").explanation
        assert "'max_age_days' removed the last" in pick(late, "bias").explanation
        with pytest.raises(CalibrationNotFoundError, match="max_age_days"):
            select_master(session, session.get(Frame, late), "bias")
        with pytest.raises(LookupError):  # the error is also a LookupError
            select_master(session, session.get(Frame, late), "dark")

        # the set-based path agrees with the one-by-one path on every light and kind
        ids = [near_day7, short, long_, cold, warm, sii, late]
        bulk = select_masters(session, ids)
        for fid in ids:
            for kind in ("bias", "dark", "flat"):
                one = pick(fid, kind)
                assert (bulk[(fid, kind)].method, bulk[(fid, kind)].master_id) == (one.method, one.master_id)

        table = missing_calibrations(session, ids)
        rows = {(r.kind, r.set_temp_c, r.exposure_time_s if r.kind == "dark" else None,
                 r.filter_name if r.kind == "flat" else None): r.lights for r in table.itertuples()}
        assert rows[("flat", -20.0, None, "Ha")] == 1
        assert rows[("flat", -10.0, None, "SII")] == 1
        assert rows[("dark", 0.0, 60.0, None)] == 1
        assert ("dark", -10.0, 300.0, None) not in rows  # the interpolated dark calibrates it


def test_bad_flags_validity_and_recorded_decisions(synthetic):
    engine, root, _ = synthetic
    light = _light(engine, root, "day8", BASE + dt.timedelta(days=8, hours=3), exposure=120.0)
    with session_scope(engine, write=True) as session:
        frame = session.get(Frame, light)
        first = select_master(session, frame, "bias")
        mark_bad(session, [first.master_id], "light leak")
        second = select_master(session, frame, "bias")
        assert second.master_id != first.master_id
        rejected = {v.master_id: v for v in second.candidates}[first.master_id]
        assert rejected.rejected_by == "is_bad" and "light leak" in rejected.reason
        set_validity(session, second.master_id, None, frame.date_obs - dt.timedelta(days=1))
        third = select_master(session, frame, "bias")
        assert third.master_id not in (first.master_id, second.master_id)
        row = record_selection(session, third)
        assert row.id is not None
        with pytest.raises(ValueError):
            set_validity(session, third.master_id, frame.date_obs, frame.date_obs)
    with session_scope(engine) as session:
        stored = session.scalars(select(CalibrationSelection).where(CalibrationSelection.frame_id == light)).one()
        assert stored.master_id == third.master_id and stored.rule_version == "default:4"
        reasons = {c["master_id"]: c["rejected_by"] for c in stored.candidates}
        assert reasons[first.master_id] == "is_bad" and reasons[second.master_id] == "validity"


def test_external_master_joins_library(engine, tmp_path):
    """A master made elsewhere (Siril/PixInsight style IMAGETYP 'Master Dark', NCOMBINE) joins
    the library when it is ingested, and a light selects it at once."""
    when = BASE
    external = _write(tmp_path / "ext", "MasterDark_60s.fits", "Master Dark", when, exposure=60.0, NCOMBINE=25)
    light = _write(tmp_path / "ext", "light.fits", "LIGHT", when + dt.timedelta(hours=2), exposure=60.0, seed=3)
    ingest_paths(engine, [tmp_path / "ext"])
    with session_scope(engine, write=True) as session:
        assert sync_library(session) == 0  # nothing left to add
        master = session.scalars(select(Master)).one()
        assert (master.kind, master.origin, master.n_combined, master.bias_subtracted) == ("dark", "external", 25, False)
        frame = session.scalar(select(Frame).join(Copy).where(Copy.path == str(light.absolute())))
        assert select_master(session, frame, "dark").master_id == master.frame_id
    assert external.exists()


def test_rules_override_per_instrument(synthetic, tmp_path):
    engine, root, _ = synthetic
    folder = tmp_path / "rules"
    folder.mkdir()
    default = (Path(__file__).resolve().parents[1] / "configs" / "matching" / "default.toml").read_text()
    (folder / "default.toml").write_text(default)
    (folder / "asi.toml").write_text(f'instruments = ["{INSTRUMENT}"]\nversion = "7"\n[flat]\ntolerance = {{ set_temp_c = 20.0 }}\n')
    book = RuleBook(folder)
    assert book.for_instrument(INSTRUMENT).version == "asi:7"
    cold = _light(engine, root, "cold", BASE + dt.timedelta(days=14, hours=3), exposure=60.0, temp=-20.0)
    with session_scope(engine) as session:
        frame = session.get(Frame, cold)
        assert not explain_selection(session, frame, "flat").found
        assert explain_selection(session, frame, "flat", rules=book).found


def test_failed_build_is_redone_under_the_same_reduction(synthetic, tmp_path):
    engine, _, summary = synthetic
    with session_scope(engine, write=True) as session:
        reduction = session.scalars(select(Reduction).order_by(Reduction.id)).first()
        reduction.status = "failed"  # as an interrupted run leaves it
        n_reductions = session.scalar(select(func.count()).select_from(Reduction))
    again = build_masters(engine, library=tmp_path / "library")
    assert len(again.built) == 1 and again.unchanged == len(summary.built) - 1
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Reduction)) == n_reductions
        assert session.get(Reduction, reduction.id).status == "done"
        assert session.scalar(select(func.count()).select_from(Master)) == len(summary.built)


# -- combining pixels -------------------------------------------------------------------------------


def test_combine_in_small_blocks_equals_numpy(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 65535, (6, 37, 23)).astype(np.uint16)
    paths = [str(write_fits(tmp_path / f"f{i}.fits", data=stack[i])) for i in range(6)]
    assert rows_per_block(6, (37, 23), (64 * 1024 * 1024 + 2 * 37 * 23 * 4 + 6 * 23 * 12 * 5) / 2**20) == 5
    small = combine_files(paths, memory_limit_mb=(64 * 1024 * 1024 + 2 * 37 * 23 * 4 + 6 * 23 * 12 * 5) / 2**20)
    np.testing.assert_array_equal(small, np.median(stack.astype(np.float64), axis=0))  # even count: mean of the middle two
    from astropy.stats import sigma_clip

    clipped = combine_files(paths, method="sigma_clip", sigma_low=2.0, sigma_high=2.0, maxiters=3)
    expected = sigma_clip(stack.astype(np.float32), sigma_lower=2.0, sigma_upper=2.0, maxiters=3, axis=0,
                          cenfunc="median", stdfunc="std").mean(axis=0)
    np.testing.assert_allclose(clipped, expected, rtol=1e-5)
    # float images (no integer fast path), odd count, and a calibration step applied per block
    floats = rng.normal(100, 10, (5, 37, 23)).astype(np.float32)
    fpaths = [str(write_fits(tmp_path / f"g{i}.fits", data=floats[i])) for i in range(5)]
    np.testing.assert_allclose(combine_files(fpaths, memory_limit_mb=70),
                               np.median(floats, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(combine_files(paths, prepare=lambda i, block, a, b: block - 10),
                                  np.median(stack.astype(np.float64) - 10, axis=0))


# -- the command line ---------------------------------------------------------------------------------


def test_cli_masters(db_url, tmp_path):
    root = tmp_path / "synthetic"
    synthetic_weeks(root)
    light = _write(root, "lights/light.fits", "LIGHT", BASE + dt.timedelta(days=8), exposure=120.0, seed=99)
    sii = _write(root, "lights/sii.fits", "LIGHT", BASE + dt.timedelta(days=8), exposure=120.0, filter_name="SII", seed=98)
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(main, ["--db", db_url, "-q", *args])
        assert result.exit_code == code, result.output + str(result.exception)
        return result.output

    run("ingest", str(root))
    out = run("masters", "build", "--library", str(tmp_path / "lib"), "--memory-limit", "256")
    assert "17 built" in out and out.count("built master badpix") == 3  # 14 masters, a mask per night of masters
    assert "0 built, 17 unchanged" in run("masters", "build", "--library", str(tmp_path / "lib"))
    out = run("masters", "select", str(light), "--explain")
    assert "rank 1" in out and "removed by max_age_days" not in out.split("\n")[0]
    out = run("masters", "select", str(sii), "--kind", "flat", "--explain", code=1)
    assert "'exact:filter_name' removed the last" in out
    out = run("masters", "select", "--target", "M 31", "--format", "csv")
    assert out.count("\n") == 1 + 2 * 3
    out = run("masters", "missing", "--format", "csv")
    assert out.splitlines()[0].startswith("kind,instrument")
    assert any(line.startswith("flat,") and ",SII," in line for line in out.splitlines())
    listing = run("masters", "list", "--kind", "bias", "--format", "csv")
    bias_id = listing.splitlines()[1].split(",")[0]
    assert "1 master(s) marked bad" in run("masters", "mark-bad", bias_id, "--reason", "test")
    assert "valid from 2026-01-01" in run("masters", "validity", bias_id, "--from", "2026-01-01", "--until", "2026-02-01")
    err = runner.invoke(main, ["--db", db_url, "masters", "mark-bad", "999999"])
    assert err.exit_code == 1 and "not a master" in err.output and "Traceback" not in err.output
    assert run("masters", "select", str(light), "--record", "--format", "json").count('"frame_id"') == 3


# -- robustness: bad inputs, unknown values, concurrent runs ----------------------------------------


def _bias_night(root: Path, day: int, n: int, *, instrument: str = INSTRUMENT) -> list[Path]:
    """SYNTHETIC: ``n`` biases on night ``day`` (after BASE)."""
    start = BASE + dt.timedelta(days=day)
    return [_write(root, f"d{day}/bias_{i}.fits", "BIAS", start + dt.timedelta(minutes=i), exposure=0.0,
                   seed=100 * day + i + 1, INSTRUME=instrument) for i in range(n)]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2880])  # the header and part of the data remain


def test_bad_input_is_left_out_and_a_bad_group_fails_alone(engine, tmp_path):
    root, library = tmp_path / "raw", tmp_path / "library"
    good = _bias_night(root, 0, 4, instrument="../../evil/cam")  # a header value that must not make the path
    short = _bias_night(root, 3, 3, instrument="../../evil/cam")
    broken = _bias_night(root, 6, 3, instrument="../../evil/cam")
    ingest_paths(engine, [root])
    for path in (good[2], short[0], *broken):
        _truncate(path)
    summary = build_masters(engine, library=library, kinds=["bias"])
    # the night with 4 biases is built from the 3 readable ones; the other nights fail alone
    assert len(summary.built) == 1 and len(summary.failed) == 2
    assert all("min_frames" in reason for _, _, reason in summary.failed)
    assert sorted(str(p) for _, p, _ in summary.skipped_inputs) == sorted(
        str(p.absolute()) for p in (good[2], short[0], *broken))
    assert all("truncated" in reason for _, _, reason in summary.skipped_inputs)
    _, frame_id, path = summary.built[0]
    assert Path(path).is_relative_to(library.absolute()) and ".." not in Path(path).parts
    with session_scope(engine) as session:
        assert session.get(Master, frame_id).n_combined == 3
        reduction_id = session.get(Frame, frame_id).reduction_id
        raw = session.scalar(select(func.count()).where(ReductionInput.reduction_id == reduction_id,
                                                         ReductionInput.role == "raw"))
        assert raw == 3
    # again: the same good inputs make the same master, a no-op; the bad frame is reported again
    again = build_masters(engine, library=library, kinds=["bias"])
    assert again.built == [] and again.unchanged == 1 and len(again.skipped_inputs) == 5


def test_unknown_exposure_is_never_a_guess():
    from archive.calib.combine import MasterBuildError
    from archive.calib.masters import _dark_factor

    subtracted, plain = Master(bias_subtracted=True), Master(bias_subtracted=False)
    assert _dark_factor(Frame(id=1, exposure_time_s=30.0), subtracted, Frame(id=2, exposure_time_s=60.0), 1.0) == 0.5
    assert _dark_factor(Frame(id=1, exposure_time_s=0.0), subtracted, Frame(id=2, exposure_time_s=60.0), 1.0) == 0.0
    assert _dark_factor(Frame(id=1, exposure_time_s=None), plain, Frame(id=2, exposure_time_s=60.0), 1.0) == 1.0
    assert _dark_factor(Frame(id=1, exposure_time_s=None), subtracted, Frame(id=2, exposure_time_s=None), 1.0) == 1.0
    with pytest.raises(MasterBuildError, match="exposure time unknown"):
        _dark_factor(Frame(id=1, exposure_time_s=None), subtracted, Frame(id=2, exposure_time_s=60.0), 0.5)


def test_default_library_is_below_the_data_home(monkeypatch, tmp_path):
    from archive.calib import default_library
    from archive.config import Settings

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_library(Settings()) == tmp_path / "archive" / "masters"
    assert default_library(Settings(raw={"masters": {"library": str(tmp_path / "lib")}})) == tmp_path / "lib"


def test_rules_refuse_a_tolerance_on_text(tmp_path):
    from archive.errors import ConfigError

    default = (Path(__file__).resolve().parents[1] / "configs" / "matching" / "default.toml").read_text()
    (tmp_path / "default.toml").write_text(default.replace("tolerance = { set_temp_c = 5.0 }",
                                                           "tolerance = { filter_name = 1.0 }"))
    with pytest.raises(ConfigError, match="text columns"):
        RuleBook(tmp_path)


def test_concurrent_builds_of_one_group_build_it_once(engine, tmp_path, monkeypatch):
    """Two runs past the first fingerprint check at once (both combining pixels): one builds,
    the other finds it running (the row is inserted if absent on the unique fingerprint, then
    claimed by a conditional update)."""
    import subprocess
    import threading

    from archive.calib import masters
    from archive.db import provenance

    _bias_night(tmp_path / "raw", 0, 3)
    ingest_paths(engine, [tmp_path / "raw"])
    barrier = threading.Barrier(2, timeout=60)
    compute = masters._compute

    def both_computing(*args, **kwargs):
        barrier.wait()
        return compute(*args, **kwargs)

    monkeypatch.setattr(masters, "_compute", both_computing)
    # the two runs are two threads of this process, whose claims would be this process's (an
    # earlier attempt of its own, free): each claims as a live process of its own instead
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    pids: dict[int, int] = {}
    monkeypatch.setattr(provenance, "_claimant", lambda: (provenance.socket.gethostname(),
                                                          pids[threading.get_ident()]))
    summaries, errors = [], []

    def run(pid):
        pids[threading.get_ident()] = pid
        try:
            summaries.append(build_masters(engine, library=tmp_path / "library", kinds=["bias"]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sleeper.pid,)) for sleeper in sleepers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    assert errors == [] and len(summaries) == 2
    assert sum(len(s.built) for s in summaries) == 1
    assert sum(s.busy + s.unchanged for s in summaries) == 1
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Reduction)) == 1
        assert session.scalar(select(func.count()).select_from(Master)) == 1


def test_running_build_of_a_live_run_is_left_alone(engine, tmp_path):
    import socket
    import subprocess

    from archive.db.base import utcnow

    _bias_night(tmp_path / "raw", 0, 3)
    ingest_paths(engine, [tmp_path / "raw"])
    library = tmp_path / "library"
    assert len(build_masters(engine, library=library, kinds=["bias"]).built) == 1
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()

    def claimed(claim_host: str, claim_pid: int, age: dt.timedelta):
        with session_scope(engine, write=True) as session:
            reduction = session.scalars(select(Reduction)).one()
            reduction.status, reduction.started_at = "running", utcnow() - age
            reduction.claim_host, reduction.claim_pid, reduction.claimed_at = claim_host, claim_pid, utcnow() - age
        return build_masters(engine, library=library, kinds=["bias"])

    assert claimed(host, 1, dt.timedelta(minutes=5)).busy == 1  # alive here
    assert claimed("elsewhere", 7, dt.timedelta(minutes=5)).busy == 1  # cannot be checked
    # another host's claim is left to that host however old (provenance.start_reduction)
    assert claimed("elsewhere", 7, dt.timedelta(days=2)).busy == 1
    assert len(claimed(host, dead.pid, dt.timedelta(minutes=5)).built) == 1  # killed
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Reduction)) == 1
        assert session.scalars(select(Reduction)).one().status == "done"
        assert session.scalar(select(func.count()).select_from(Master)) == 1


def test_flat_that_cannot_be_normalized_is_left_out(engine, tmp_path):
    root = tmp_path / "raw"
    _bias_night(root, 0, 3)
    start = BASE + dt.timedelta(minutes=30)
    flats = [_write(root, f"d0/flat_{i}.fits", "FLAT", start + dt.timedelta(minutes=i), exposure=2.0,
                    value=0.0 if i == 1 else 20000 + 100 * i, seed=50 + i) for i in range(4)]  # flat 1: cap on
    ingest_paths(engine, [root])
    summary = build_masters(engine, library=tmp_path / "library")
    assert summary.failed == [] and sorted(k for k, _, _ in summary.built) == ["bias", "flat"]
    assert [(kind, Path(path).name) for kind, path, _ in summary.skipped_inputs] == [("flat", flats[1].name)]
    assert "cannot normalize" in summary.skipped_inputs[0][2]
    flat_id = next(fid for kind, fid, _ in summary.built if kind == "flat")
    with session_scope(engine) as session:
        assert session.get(Master, flat_id).n_combined == 3
        assert np.median(fits.getdata(_paths(session, [flat_id])[flat_id])) == pytest.approx(1.0, abs=1e-6)
    again = build_masters(engine, library=tmp_path / "library")
    assert again.built == [] and again.unchanged == 2


def test_configured_rules_are_the_default_of_every_step(tmp_path, monkeypatch):
    """[masters] rules in the configuration is what building, selection and reduction use
    when given no rules (not only the masters commands)."""
    from archive.calib import default_rulebook
    from archive.calib.selection import rules_for

    folder = tmp_path / "my-rules"
    folder.mkdir()
    default = (Path(__file__).resolve().parents[1] / "configs" / "matching" / "default.toml").read_text()
    (folder / "default.toml").write_text(default.replace('name = "default"', 'name = "observatory"', 1))
    assert default_rulebook().for_instrument(None).version.startswith("default:")
    config = tmp_path / "config.toml"
    config.write_text(f'[masters]\nrules = "{folder}"\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(config))
    assert default_rulebook().for_instrument(None).version.startswith("observatory:")
    assert rules_for(None, None).version.startswith("observatory:")


def test_masters_are_grouped_and_selected_by_bayer_pattern(synthetic, tmp_path):
    """SYNTHETIC: a one-shot colour camera's biases (BAYERPAT 'RGGB') make a master of their
    own, and masters are chosen on the Bayer pattern: a colour light takes the colour master,
    a mono light the mono one (though the colour one is nearer in time), a light read out one
    column on (XBAYROFF = 1: GRBG) none; the set-based and one-by-one paths agree."""
    engine, root, _ = synthetic
    day = BASE + dt.timedelta(days=7, hours=4)
    for i in range(3):
        _write(root, f"osc/bias_{i}.fits", "BIAS", day + dt.timedelta(minutes=i), exposure=0.0, seed=900 + i,
               BAYERPAT="RGGB")
    ingest_paths(engine, [root / "osc"])
    summary = build_masters(engine, library=tmp_path / "library")
    assert [k for k, _, _ in summary.built] == ["bias"]
    when = day + dt.timedelta(hours=1)
    colour = _light(engine, root, "colour", when, exposure=60.0, BAYERPAT="RGGB")
    shifted = _light(engine, root, "shifted", when, exposure=60.0, BAYERPAT="RGGB", XBAYROFF=1)
    mono = _light(engine, root, "mono", when, exposure=60.0)
    with session_scope(engine) as session:
        frames = {fid: session.get(Frame, fid) for fid in (colour, shifted, mono)}
        assert [frames[f].bayer_pattern for f in (colour, shifted, mono)] == ["RGGB", "GRBG", None]
        chosen = {fid: explain_selection(session, frame, "bias") for fid, frame in frames.items()}
        assert session.get(Frame, chosen[colour].master_id).bayer_pattern == "RGGB"
        mono_master = session.get(Frame, chosen[mono].master_id)
        assert mono_master.bayer_pattern is None and abs(mono_master.date_obs - day) > dt.timedelta(hours=3)
        assert not chosen[shifted].found
        assert "'exact:bayer_pattern' removed the last" in chosen[shifted].explanation
        bulk = select_masters(session, list(frames))
        for fid in frames:
            assert bulk[(fid, "bias")].master_id == chosen[fid].master_id
