"""The reduction pipeline on small SYNTHETIC nights (128x128 frames with Gaussian stars), both
backends: failures recorded and the loop going on, alignment failures left out of the stack,
folder search, and the default search dates.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import func, select

from archive.cli import main
from archive.db.models import Frame, Reduction
from archive.db.session import session_scope
from archive import keywords as kw
from archive.workflows.night import default_searches, find_folders
from tests.factories import nina_header, write_fits

SHAPE = (128, 128)
STARS = np.random.default_rng(7).uniform(15, 113, (12, 2))
FLUX = np.random.default_rng(8).uniform(2000, 20000, 12)


def _sky(dx: float, dy: float, seed: int) -> np.ndarray:
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    image = np.full(SHAPE, 100.0)
    for (sx, sy), f in zip(STARS, FLUX):
        image += f / (2 * np.pi * 1.5**2) * np.exp(-((x - sx - dx) ** 2 + (y - sy - dy) ** 2) / (2 * 1.5**2))
    return image + np.random.default_rng(seed).normal(0, 3, SHAPE)


def _frame(path, image_type, seconds, minute, data, drop=(), **extra):
    header = nina_header(image_type.upper(), EXPTIME=seconds, EXPOSURE=seconds,
                         **{"DATE-OBS": f"2026-11-20T22:{minute:02d}:00"}, **extra)
    for key in drop:
        header.pop(key)
    write_fits(path, header, data=np.clip(data, 0, 65535).astype(np.uint16))


def numpy_masters(folder):
    """The night's master bias, bias-subtracted dark and normalized flat computed independently
    with numpy from the raw files under ``folder`` (medians; each flat normalized to 1 first)."""
    def stack(pattern):
        return np.stack([fits.getdata(p).astype(float) for p in sorted(folder.rglob(pattern))])

    bias = np.median(stack("bias_*.fits"), axis=0)
    dark = np.median(stack("dark_*.fits"), axis=0) - bias
    flats = stack("flat_*.fits") - bias
    flats /= np.median(flats, axis=(1, 2))[:, None, None]
    flat = np.median(flats, axis=0)
    return bias, dark, flat / np.median(flat)


def synthetic_night(folder, noise_light: bool = True, light_s: float = 120.0, light_drop=()):
    """3 bias, 3 dark 120 s, 3 flats Ha 2 s, 3 M 31 lights 120 s shifted by a few pixels, and
    (``noise_light``) a fourth light of pure noise that cannot be aligned. ``light_drop``:
    header keywords left out of the lights."""
    rng = np.random.default_rng(1)
    for i in range(3):
        _frame(folder / f"bias_{i}.fits", "bias", 0.0, i, 500 + rng.normal(0, 3, SHAPE))
        _frame(folder / f"dark_{i}.fits", "dark", 120.0, 5 + i, 520 + rng.normal(0, 3, SHAPE))
        _frame(folder / f"flat_{i}.fits", "flat", 2.0, 10 + i, 500 + 20000 * (1 + 0.1 * rng.random()) * np.ones(SHAPE)
               + rng.normal(0, 30, SHAPE))
    for i, (dx, dy) in enumerate([(0, 0), (3.2, -2.1), (-4.5, 1.7)]):
        _frame(folder / f"m31_{i}.fits", "light", light_s, 20 + i, 500 + 20 * light_s / 120 + _sky(dx, dy, 10 + i),
               drop=light_drop)
    if noise_light:
        _frame(folder / "m31_noise.fits", "light", 120.0, 30, 620 + rng.normal(0, 3, SHAPE))


def test_failures_are_recorded_and_the_loop_goes_on(db_url, tmp_path):
    root = tmp_path / "imaging"
    synthetic_night(root / "2026-11-20" / "good")
    bad = root / "2026-11-20_other"
    bad.mkdir(parents=True)
    (bad / "truncated.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}
    args = ["--db", db_url, "night", "2026-11-20", "--root", str(root), "--output", str(tmp_path / "out"), "--serial"]
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the truncated file: a failure
    assert "rejected register" in result.output and "m31_noise" in result.output  # judged, not failed
    assert "FAILED register" not in result.output
    assert "FAILED ingest" in result.output and "truncated.fits" in result.output
    assert "M 31 / Ha: 4 calibrated, 3 registered, 1 stacked, 0 failed, 1 rejected" in result.output
    from archive.db.session import open_catalogue

    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            assert not session.scalars(select(Reduction).where(Reduction.status == "failed")).all()
            rejected = session.scalars(select(Reduction).where(Reduction.status == "rejected")).all()
            assert [r.step for r in rejected] == ["register"] and "too few stars" in rejected[0].message
            assert "again at 2.5 sigma" in rejected[0].message  # tried a second time first
            assert rejected[0].failure_kind == "alignment"  # deterministic: not tried again
            stack = session.scalars(select(Frame).where(Frame.image_type == "stacked")).one()
            header = fits.Header.fromstring(stack.header, sep="\n")
            assert header[kw.NCOMBINE] == 3 and header[kw.TOTAL_EXPOSURE] == 360.0
            cal = session.scalars(select(Frame).where(Frame.image_type == "calibrated")).first()
            # lights of 120 s: the 120 s master dark, exact
            dark_method = fits.Header.fromstring(cal.header, sep="\n")[kw.DARK_METHOD]
            assert dark_method == "exact"
            n = session.scalar(select(func.count()).select_from(Reduction))
        again = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
        assert "0 calibrated, 0 registered, 0 stacked" in again.output
        with session_scope(engine) as session:
            assert session.scalar(select(func.count()).select_from(Reduction)) == n
    finally:
        engine.dispose()


def test_default_search_and_folders(tmp_path):
    assert default_searches(("%Y-%m-%d", "%Y%m%d", "%Y_%m_%d"), dt.date(2026, 11, 21)) == [
        "2026-11-20", "20261120", "2026_11_20"]
    for name in ("a/2026-11-20/lights", "b/20261120", "c/2026-11-19", ".hidden/2026-11-20", "reduced/2026-11-20"):
        (tmp_path / name).mkdir(parents=True)
    found = find_folders(tmp_path, ["2026-11-20", "20261120"], exclude=[tmp_path / "reduced"])
    assert found == [tmp_path / "a" / "2026-11-20", tmp_path / "b" / "20261120"]
    with pytest.raises(Exception, match="not a folder"):
        find_folders(tmp_path / "missing", ["x"])


def test_night_without_imaging_root_is_a_clear_error(db_url, tmp_path):
    (tmp_path / "config.toml").write_text("")
    result = CliRunner().invoke(main, ["--db", db_url, "night"], env={"ARCHIVE_CONFIG": str(tmp_path / "config.toml"),
                                                                       "ARCHIVE_IMAGING_ROOT": ""})
    assert result.exit_code == 1 and "no imaging root" in result.output


def test_scaled_dark_in_the_pipeline(db_url, tmp_path):
    """Lights of 60 s with only a 120 s master dark: the bias-subtracted dark scaled by 0.5."""
    root = tmp_path / "imaging"
    synthetic_night(root / "2026-11-20", noise_light=False, light_s=60.0)
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}
    result = CliRunner().invoke(main, ["--db", db_url, "night", "2026-11-20", "--root", str(root), "--output",
                                       str(tmp_path / "out"), "--serial"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cal = min((tmp_path / "out").rglob("m31_0_*_cal.fits"))
    header = fits.getheader(cal)
    assert header[kw.DARK_METHOD] == "scaled" and header[kw.DARK_SCALE] == pytest.approx(0.5)
    bias, dark, flat = numpy_masters(root)
    light = fits.getdata(root / "2026-11-20" / "m31_0.fits").astype(float)
    expected = (light - bias - 0.5 * dark) / flat
    np.testing.assert_allclose(fits.getdata(cal), expected, rtol=1e-3, atol=0.5)

    # the same lights stacked again, per night, by sigma-clipped mean, with a PNG preview
    again = CliRunner().invoke(main, ["--db", db_url, "reduce", "--target", "M31", "--method", "sigma_clip",
                                      "--per-night", "--previews", "--serial", "--output", str(tmp_path / "out")],
                               env=env, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "0 calibrated" in again.output and "1 stacked" in again.output
    stacks = sorted((tmp_path / "out" / "stacks").rglob("*.fits"))
    assert len(stacks) == 2
    assert sorted(fits.getval(p, kw.COMBINE) for p in stacks) == ["median", "sigma_clip"]
    assert len(list((tmp_path / "out" / "stacks").rglob("*.png"))) == 1


def test_stale_after_a_rule_change_and_a_better_master(db_url, tmp_path):
    """A new rules version makes every calibrated frame stale; so does a nearer master bias."""
    import re
    import shutil

    from archive.calib.rules import RuleBook
    from archive.db.session import open_catalogue
    from archive.reduce.stale import find_stale
    from archive.resources import resource_dir

    root = tmp_path / "imaging"
    synthetic_night(root / "2026-11-20", noise_light=False)
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}
    args = ["--db", db_url, "night", "2026-11-20", "--root", str(root), "--output", str(tmp_path / "out"), "--serial"]
    assert CliRunner().invoke(main, args, env=env, catch_exceptions=False).exit_code == 0
    rules = tmp_path / "matching"
    shutil.copytree(resource_dir("configs") / "matching", rules)
    default = rules / "default.toml"
    text = default.read_text()
    changed = re.sub(r'^version = "([^"]*)"', r'version = "\1-changed"', text, count=1, flags=re.M)
    assert changed != text
    default.write_text(changed)
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            assert find_stale(session) == []
            stale = find_stale(session, rules=RuleBook(rules))
        calibrated = [p for p in stale if p.step == "calibrate"]
        assert len(calibrated) == 3 and all("rules changed" in " ".join(p.reasons) for p in calibrated)
        assert {p.step for p in stale} == {"calibrate", "register", "stack"}
        # three more bias frames, taken just before the lights: a nearer master bias
        later = root / "2026-11-20" / "late_bias"
        rng = np.random.default_rng(5)
        for i in range(3):
            _frame(later / f"bias_late_{i}.fits", "bias", 0.0, 17 + i, 500 + rng.normal(0, 3, SHAPE))
        from archive.calib.masters import build_masters
        from archive.ingest.ingest import ingest_paths
        from archive.db.frames import FrameFilter

        ingest_paths(engine, [later])
        built = build_masters(engine, filters=FrameFilter(image_type="bias"), kinds=("bias",),
                              library=tmp_path / "masters")
        assert built.built
        with session_scope(engine) as session:
            stale = find_stale(session)
        reasons = " ".join(r for p in stale if p.step == "calibrate" for r in p.reasons)
        assert "bias: master" in reasons and "would be chosen instead" in reasons
        result = CliRunner().invoke(main, ["--db", db_url, "reduce", "--stale", "--serial", "--output",
                                           str(tmp_path / "out")], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with session_scope(engine) as session:
            assert find_stale(session) == []
    finally:
        engine.dispose()


def test_required_calibrations_are_configuration_per_instrument(db_url, tmp_path):
    """An instrument whose rules require bias, dark and flat gets no product without them: the
    reason names each required master and the rule that removed its last candidate."""
    import shutil

    from archive.resources import resource_dir

    folder = tmp_path / "lights"
    for i in range(2):
        _frame(folder / f"m31_{i}.fits", "light", 120.0, 20 + i, 520 + _sky(0, 0, i))
    rules = tmp_path / "matching"
    shutil.copytree(resource_dir("configs") / "matching", rules)
    (rules / "strict.toml").write_text('instruments = ["ZWO ASI2600MM Pro"]\nrequired = ["bias", "dark", "flat"]\n')
    (tmp_path / "config.toml").write_text(f'[masters]\nrules = "{rules}"\n')
    env = {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}
    assert CliRunner().invoke(main, ["--db", db_url, "ingest", str(folder)], env=env).exit_code == 0
    result = CliRunner().invoke(main, ["--db", db_url, "reduce", "--target", "M 31", "--serial", "--output",
                                       str(tmp_path / "out")], env=env, catch_exceptions=False)
    assert result.exit_code == 1
    assert "no master bias (required): no master bias in the library" in result.output
    assert "no master flat (required)" in result.output
    assert not (tmp_path / "out").exists()


def test_lights_that_require_no_calibration_are_registered_and_stacked_uncalibrated(db_url, tmp_path):
    """With the default rule ("available") an instrument with no master in the library needs
    none: its lights are passed on uncalibrated (the header and provenance say so), registered
    and stacked; exit status 0."""
    folder = tmp_path / "lights"
    for i, (dx, dy) in enumerate([(0, 0), (3.2, -2.1), (-4.5, 1.7)]):
        _frame(folder / f"m31_{i}.fits", "light", 120.0, 20 + i, 500 + _sky(dx, dy, 10 + i))
    (tmp_path / "none.toml").write_text("")  # an empty user file (ARCHIVE_CONFIG must name a file)
    env = {"ARCHIVE_CONFIG": str(tmp_path / "none.toml")}
    assert CliRunner().invoke(main, ["--db", db_url, "ingest", str(folder)], env=env).exit_code == 0
    result = CliRunner().invoke(main, ["--db", db_url, "reduce", "--target", "M 31", "--serial", "--output",
                                       str(tmp_path / "out")], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    calibrated = sorted((tmp_path / "out").rglob("*_cal.fits"))
    assert len(calibrated) == 3
    assert all(fits.getval(p, kw.STEPS) == "uncalibrated" for p in calibrated)
    raw = fits.getdata(folder / "m31_0.fits").astype(np.float64)
    mine = next(p for p in calibrated if p.name.startswith("m31_0"))
    np.testing.assert_allclose(fits.getdata(mine), raw, rtol=1e-6)  # nothing applied
    stacks = list((tmp_path / "out" / "stacks").rglob("*.fits"))
    assert len(stacks) == 1 and fits.getval(stacks[0], kw.NCOMBINE) == 3
    engine = _engine(db_url)
    try:
        with session_scope(engine) as session:
            reductions = session.scalars(select(Reduction).where(Reduction.step == "calibrate")).all()
            assert len(reductions) == 3
            assert all(r.parameters["missing"] == ["bias", "dark", "flat"] and not r.parameters["masters"]
                       for r in reductions)
    finally:
        engine.dispose()


# -- review fixes ------------------------------------------------------------------------------


def _run(db_url, tmp_path, *args):
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    env = {"ARCHIVE_CONFIG": str(tmp_path / "config.toml")}
    return CliRunner().invoke(main, ["--db", db_url, *args, "--serial", "--output", str(tmp_path / "out")], env=env,
                              catch_exceptions=False)


def _night(db_url, tmp_path):
    return _run(db_url, tmp_path, "night", "2026-11-20", "--root", str(tmp_path / "imaging"))


def _engine(db_url):
    from archive.db.session import open_catalogue

    return open_catalogue(db_url)


def test_two_lights_of_one_name_get_two_products(db_url, tmp_path):
    """Two rigs (or a counter restarting per session) write m31_0.fits into two folders of one
    night: each light gets its own calibrated file, linked to it, none overwritten."""
    from archive.files import sha256_file
    from archive.reduce.registration import current_calibrated

    night = tmp_path / "imaging" / "2026-11-20"
    synthetic_night(night / "rig_a", noise_light=False)
    _frame(night / "rig_b" / "m31_0.fits", "light", 120.0, 40, 520 + _sky(2.0, 1.0, 99))
    result = _night(db_url, tmp_path)
    assert result.exit_code == 0, result.output
    engine = _engine(db_url)
    try:
        with session_scope(engine) as session:
            from archive.db.models import Copy

            lights = session.scalars(select(Frame).join(Copy, Copy.frame_id == Frame.id).where(
                Frame.image_type == "light", Copy.path.like("%/m31_0.fits"))).all()
            assert len(lights) == 2
            current = current_calibrated(session, [light.id for light in lights])
            products = {}
            for light in lights:
                cal_id, rid = current[light.id]
                path = session.scalar(select(Copy.path).where(Copy.frame_id == cal_id, Copy.is_current))
                cal = session.get(Frame, cal_id)
                assert path is not None and sha256_file(path) == cal.sha256  # the file is still this product
                assert cal.date_obs == light.date_obs  # made from its own light
                assert fits.getval(path, kw.FINGERPRINT) == session.get(Reduction, rid).fingerprint
                products[light.id] = path
            assert len(set(products.values())) == 2
    finally:
        engine.dispose()


def test_lights_with_exposure_keyword_only_stack_with_their_exposure(db_url, tmp_path):
    """EXPOSURE but no EXPTIME: the stack's exposure cards come from the catalogue (never 0)."""
    synthetic_night(tmp_path / "imaging" / "2026-11-20", noise_light=False, light_drop=("EXPTIME",))
    result = _night(db_url, tmp_path)
    assert result.exit_code == 0, result.output
    stack = min((tmp_path / "out" / "stacks").rglob("*.fits"))
    header = fits.getheader(stack)
    assert header[kw.NCOMBINE] == 3 and header[kw.EXPOSURE_TIME] == 120.0 and header[kw.TOTAL_EXPOSURE] == 360.0
    assert header[kw.DATE_BEGIN].startswith("2026-11-20T22:20") and header[kw.DATE_END].startswith("2026-11-20T22:24")


def test_one_unreadable_frame_is_left_out_and_a_failed_stack_is_retried(db_url, tmp_path, monkeypatch):
    from archive.reduce import registration, stacking

    real_count, real_stack = registration.count_stars, stacking.stack_files

    def count_stars(path, *args):
        if "m31_1" in path:
            raise OSError("unreadable")
        return real_count(path, *args)

    def stack_files(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(registration, "count_stars", count_stars)
    monkeypatch.setattr(stacking, "stack_files", stack_files)
    synthetic_night(tmp_path / "imaging" / "2026-11-20", noise_light=False)
    # without measurement: registration detects the stars itself (measured stars are reused)
    result = _run(db_url, tmp_path, "night", "2026-11-20", "--root", str(tmp_path / "imaging"), "--no-measure")
    assert result.exit_code == 1
    assert "FAILED register" in result.output and "m31_1" in result.output and "unreadable" in result.output
    assert "M 31 / Ha: 3 calibrated, 2 registered, 0 stacked, 2 failed" in result.output  # frame + stack
    monkeypatch.setattr(stacking, "stack_files", real_stack)
    again = _run(db_url, tmp_path, "reduce", "--target", "M31")
    assert "1 stacked" in again.output, again.output  # the failed stack is tried again
    engine = _engine(db_url)
    try:
        with session_scope(engine) as session:
            stacks = session.scalars(select(Reduction).where(Reduction.step == "stack")).all()
            assert [r.status for r in stacks] == ["done"]  # the same row, taken up again
    finally:
        engine.dispose()


def test_rejections_are_kept_failures_retried(db_url, tmp_path, monkeypatch):
    """A frame that cannot be aligned is rejected and kept so; a registration that broke (an
    unreadable file) failed and is done on the same row by the next run."""
    from archive.reduce import registration

    real_register = registration.register_file

    def register_file(job):
        if "m31_2" in job.source:
            raise OSError("NFS hiccup")
        return real_register(job)

    monkeypatch.setattr(registration, "register_file", register_file)
    synthetic_night(tmp_path / "imaging" / "2026-11-20")
    assert _night(db_url, tmp_path).exit_code == 1
    engine = _engine(db_url)
    try:
        def failed():
            with session_scope(engine) as session:
                return {r.id: (r.status, r.failure_kind, r.finished_at, r.message) for r in session.scalars(
                    select(Reduction).where(Reduction.step == "register", Reduction.status.in_(("failed", "rejected"))))}

        first = failed()
        assert sorted((s, str(f)) for s, f, _, _ in first.values()) == [("failed", "error"), ("rejected", "alignment")]
        monkeypatch.setattr(registration, "register_file", real_register)
        again = _run(db_url, tmp_path, "reduce", "--target", "M31")
        assert "1 registered" in again.output and "1 stacked" in again.output, again.output
        after = failed()
        # the rejection is kept as it was; the failure was done on the same row
        assert after == {rid: v for rid, v in first.items() if v[0] == "rejected"}
        with session_scope(engine) as session:
            assert session.scalar(select(func.count()).select_from(Reduction).where(Reduction.step == "register")) == 4
    finally:
        engine.dispose()


def test_tile_compressed_and_multi_extension_lights_are_calibrated(db_url, tmp_path):
    folder = tmp_path / "imaging" / "2026-11-20"
    synthetic_night(folder, noise_light=False)
    raw = {}
    for name in ("m31_1", "m31_2"):
        with fits.open(folder / f"{name}.fits") as hdul:
            raw[name] = (hdul[0].data.copy(), hdul[0].header.copy())
        (folder / f"{name}.fits").unlink()
    data, header = raw["m31_1"]
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(folder / "m31_1.fits.fz")
    data, header = raw["m31_2"]  # MEF: the exposure's cards in the primary header, the image in an extension
    primary = fits.PrimaryHDU(header=header.copy())
    primary.header["NAXIS"] = 0
    fits.HDUList([primary, fits.ImageHDU(data, name="SCI")]).writeto(folder / "m31_2.fits")
    result = _night(db_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert "M 31 / Ha: 3 calibrated, 3 registered, 1 stacked" in result.output
    calibrated = {p.name.split("_")[1]: p for p in (tmp_path / "out").rglob("*_cal.fits")}
    assert sorted(calibrated) == ["0", "1", "2"]
    bias, dark, flat = numpy_masters(folder)
    for name in ("1", "2"):
        expected = (raw[f"m31_{name}"][0].astype(float) - bias - dark) / flat
        np.testing.assert_allclose(fits.getdata(calibrated[name]), expected, rtol=1e-3, atol=0.5)
        assert fits.getval(calibrated[name], "OBJECT") == "M 31"


def test_the_night_on_a_dask_cluster_makes_the_products_of_one_process(db_url, tmp_path, monkeypatch):
    """The README's Dask recipe: run_night with a local Dask cluster's executor (two worker
    processes) makes the same calibrated, registered and stacked pixels as one process."""
    from distributed import Client, LocalCluster

    from archive.config import load_settings
    from archive.db.session import open_catalogue
    from archive.reduce.config import load_reduction_config
    from archive.workflows.night import run_night

    synthetic_night(tmp_path / "imaging" / "2026-11-20", noise_light=False)

    def night(url, name, executor):
        (tmp_path / f"{name}.toml").write_text(f'[masters]\nlibrary = "{tmp_path / name / "masters"}"\n')
        monkeypatch.setenv("ARCHIVE_CONFIG", str(tmp_path / f"{name}.toml"))
        settings = load_settings()
        out = tmp_path / name / "products"
        config = load_reduction_config(settings, {"night": {"imaging_root": str(tmp_path / "imaging")},
                                                  "output": {"root": str(out)}})
        engine = open_catalogue(url)
        try:
            summary = run_night(engine, "2026-11-20", config=config, settings=settings, executor=executor)
        finally:
            engine.dispose()
        assert summary.ok, summary
        return {str(p.relative_to(out)): fits.getdata(p) for p in out.rglob("*.fits")}

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_dask = night(db_url, "dask", client.get_executor())
    in_process = night(str(tmp_path / "serial.sqlite"), "serial", None)
    assert sorted(on_dask) == sorted(in_process) and len(on_dask) == 3 + 3 + 1  # calibrated, registered, stack
    for name, data in in_process.items():
        np.testing.assert_array_equal(on_dask[name], data, err_msg=name)


def test_lights_are_calibrated_with_masters_of_another_folder_of_the_night(db_url, tmp_path):
    """Lights under A_M31/2026-11-20 and their calibrations under Z_calibration/2026-11-20 (the
    lights' folder comes first): every folder is ingested and the night's masters built before
    any light is reduced, so the first run calibrates and stacks the lights."""
    root = tmp_path / "imaging"
    calibration = root / "Z_calibration" / "2026-11-20"
    synthetic_night(calibration, noise_light=False)
    (root / "A_M31" / "2026-11-20").mkdir(parents=True)
    for light in calibration.glob("m31_*.fits"):
        light.rename(root / "A_M31" / "2026-11-20" / light.name)
    result = _run(db_url, tmp_path, "night", "2026-11-20", "--root", str(root))
    assert result.exit_code == 0, result.output
    lights = root / "A_M31" / "2026-11-20"
    assert f"{lights}: ok: 3 new file(s), 0 master(s) built, 3 light(s), 3 calibrated, 3 registered, 1 stacked" \
        in result.output
    assert f"{calibration}: ok: 9 new file(s), 4 master(s) built, 0 light(s)" in result.output
