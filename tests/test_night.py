"""End to end on the real ARCSAT night: ``archive night`` makes masters, calibrated lights, a
registered stack, and provenance from the stack back to the raw frames. Both backends.

The night is run once per backend (module-scoped, the frames are 1024x1024); the tests then
look at the result. The test that changes the catalogue (``stale``) comes last.
"""

from __future__ import annotations

from pathlib import Path

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import func, select

from archive.cli import main
from archive.db.models import (
    CalibrationSelection,
    Copy,
    Frame,
    IngestRun,
    Master,
    Reduction,
    ReductionInput,
)
from archive.db.session import open_catalogue, session_scope
from archive import keywords as kw
from archive.db.provenance import provenance_tree, raw_leaves, used_by
from tests.conftest import SHARED_DATA, catalogue_url

NIGHT = SHARED_DATA / "arcsat-uw-astr480" / "data" / "20250601"


def _stack(pattern: str) -> np.ndarray:
    return np.stack([fits.getdata(p).astype(np.float64) for p in sorted(NIGHT.glob(pattern))])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def night(request, tmp_path_factory):
    """The ARCSAT night copied into an imaging root and run through ``archive night`` once."""
    yield from run_arcsat_night(request, tmp_path_factory)


def run_arcsat_night(request, tmp_path_factory):
    """The body of a ``night`` fixture (parametrized by backend), for other modules to share:
    yields base, root, url, env, args, result (of the CLI run), engine and runner."""
    base = tmp_path_factory.mktemp(f"night_{request.param}")
    root = base / "imaging"
    shutil.copytree(NIGHT, root / "2025-06-01_arcsat")
    config = base / "config.toml"
    config.write_text(f'[masters]\nlibrary = "{base / "masters"}"\n')
    with catalogue_url(request, base) as url:
        env = {"ARCHIVE_CONFIG": str(config)}
        runner = CliRunner()
        args = ["-q", "--db", url, "night", "2025-06-01", "--root", str(root), "--output", str(base / "reduced"),
                "--workers", "2"]
        result = runner.invoke(main, args, env=env, catch_exceptions=False)
        engine = open_catalogue(url)
        yield {"base": base, "root": root, "url": url, "env": env, "args": args, "result": result, "engine": engine,
               "runner": runner}
        engine.dispose()


def _frames(session, image_type, target_key=None):
    query = select(Frame).where(Frame.image_type == image_type)
    if target_key:
        query = query.where(Frame.target_key == target_key)
    return list(session.scalars(query.order_by(Frame.date_obs_s)))


def test_night_makes_masters_calibrated_lights_and_a_stack(night):
    assert night["result"].exit_code == 0, night["result"].output
    with session_scope(night["engine"]) as session:
        assert {f.image_type for f in _frames(session, "master_bias") + _frames(session, "master_dark")
                + _frames(session, "master_flat")} == {"master_bias", "master_dark", "master_flat"}
        calibrated = _frames(session, "calibrated", "xo1b")
        assert len(calibrated) == 16
        assert all(f.reduction_id is not None and f.duplicate_of_id is None for f in calibrated)
        stacks = _frames(session, "stacked")
        assert len(stacks) == 1
        header = fits.Header.fromstring(stacks[0].header, sep="\n")
        assert header[kw.NCOMBINE] == 16 and header[kw.TOTAL_EXPOSURE] == 960.0
        assert header[kw.DATE_BEGIN].startswith("2025-06-02T04:10")
        assert session.scalar(select(func.count()).select_from(Reduction).where(Reduction.status != "done")) == 0
        reduction = session.get(Reduction, stacks[0].reduction_id)
        assert reduction.step == "stack" and reduction.host and reduction.software["astroalign"]
        assert reduction.parameters["method"] == "median"
    assert not list(night["base"].rglob(".*.part")) and not list(night["base"].rglob(".*.tmp-*"))


def test_the_night_adds_three_ingest_runs(night):
    """One product protocol: the raw folder is one ingest run, the masters one, the reduction's
    products (calibrated, registered, stacked) one, not one per product (issue 9: at most five)."""
    with session_scope(night["engine"]) as session:
        runs = session.scalars(select(IngestRun).order_by(IngestRun.id)).all()
        products = session.scalar(select(func.count()).select_from(Frame).where(Frame.reduction_id.is_not(None)))
        # a stack, calibrated and registered lights, three masters and the bad-pixel mask
        assert products >= 1 + 16 + 16 + 1 + 4
        assert len(runs) == 3
        assert all(run.finished_at is not None for run in runs)
        per_run = dict(session.execute(select(Frame.run_id, func.count()).group_by(Frame.run_id)).all())
        assert per_run[runs[1].id] == 4 and runs[1].n_new == 4  # the masters and the mask
        assert per_run[runs[2].id] == runs[2].n_new == products - 4  # calibrated, registered, stacked


def test_calibrated_pixels_equal_numpy_from_raw(night):
    """(light - bias - scaled dark) / normalized flat, from the raw files with numpy alone."""
    bias = np.median(_stack("Bias_*.fits"), axis=0)
    dark = np.median(_stack("Dark_*.fits"), axis=0) - bias  # 60 s, bias-subtracted
    # 76-82 s flats: no exact, longer or interpolated dark, so the 60 s dark scaled up (scale_up)
    t_flats = np.array([fits.getval(p, "EXPTIME") for p in sorted(NIGHT.glob("domeflat_z_*.fits"))])
    flats = _stack("domeflat_z_*.fits") - bias - dark * (t_flats / 60.0)[:, None, None]
    flats /= np.median(flats, axis=(1, 2))[:, None, None]
    flat = np.median(flats, axis=0)
    flat /= np.median(flat)
    light_path = sorted(NIGHT.glob("XO1-b_z_*.fits"))[3]
    light = fits.getdata(light_path).astype(np.float64)
    t_light, t_dark = fits.getval(light_path, "EXPTIME"), 60.0
    expected = (light - bias - dark * (t_light / t_dark)) / np.maximum(flat, 0.01)
    with session_scope(night["engine"]) as session:
        calibrated = _frames(session, "calibrated", "xo1b")[3]
        path = session.scalar(select(Copy.path).where(Copy.frame_id == calibrated.id, Copy.is_current))
        selections = session.scalars(select(CalibrationSelection).where(
            CalibrationSelection.reduction_id == calibrated.reduction_id)).all()
        mask_id = next(s.master_id for s in selections if s.kind == "badpix")
        mask_path = session.scalar(select(Copy.path).where(Copy.frame_id == mask_id, Copy.is_current))
    # the night's bad-pixel mask (issue 10) is applied too: its pixels are NaN, the others as before
    assert {s.kind: s.method for s in selections} == {"bias": "exact", "dark": "exact", "flat": "exact",
                                                       "badpix": "exact"}
    with fits.open(path) as hdul:
        got, header = hdul[0].data.astype(np.float64), hdul[0].header
    assert header["BITPIX"] == -32 and header[kw.STEPS] == "bias,dark,flat,bad_pixels"
    assert header[kw.MASTER_DARK].startswith("master_dark")
    masked = fits.getdata(mask_path) != 0
    assert 0 < masked.sum() < 0.01 * masked.size and np.array_equal(np.isnan(got), masked)
    np.testing.assert_allclose(got[~masked], expected[~masked], rtol=2e-4, atol=0.05)


def test_provenance_leads_from_the_stack_to_every_raw_frame(night):
    with session_scope(night["engine"]) as session:
        stack = _frames(session, "stacked")[0]
        tree = provenance_tree(session, stack)
        leaves = raw_leaves(tree)
        raw = {f.id: f for f in session.scalars(select(Frame).where(Frame.id.in_(leaves)))}
        stack_path = session.scalar(select(Copy.path).where(Copy.frame_id == stack.id, Copy.is_current))
        bias = _frames(session, "master_bias")[0]
        bias_products = used_by(session, bias)
    kinds = sorted(f.image_type for f in raw.values())
    # 5 bias + 5 dark + 5 flat + 16 XO-1 b lights: every raw frame of the night except the
    # other target's light, which is not in this stack
    assert kinds.count("bias") == 5 and kinds.count("dark") == 5 and kinds.count("flat") == 5
    assert kinds.count("light") == 16 and len(raw) == 31
    assert {f.target_key for f in raw.values() if f.image_type == "light"} == {"xo1b"}
    assert tree["reduction"]["step"] == "stack" and len(tree["inputs"]) == 16
    steps = {p["step"] for p in bias_products}
    # (the bad-pixel mask is made from the master dark and flat, so from the bias too)
    assert steps == {"master_dark", "master_flat", "master_badpix", "calibrate", "register", "stack"}
    # the CLI: JSON tree, and the reverse
    out = night["runner"].invoke(main, ["--db", night["url"], "provenance", "--json", stack_path], env=night["env"])
    assert out.exit_code == 0, out.output
    assert raw_leaves(json.loads(out.stdout)) == leaves
    text_out = night["runner"].invoke(main, ["--db", night["url"], "provenance", "--tree", stack_path], env=night["env"])
    assert "<- stack" in text_out.output and "[raw] bias" in text_out.output
    light = min((night["root"] / "2025-06-01_arcsat").glob("XO1-b_z_*.fits"))
    rev = night["runner"].invoke(main, ["--db", night["url"], "provenance", "--used-by", str(light)], env=night["env"])
    assert rev.exit_code == 0 and "calibrate: calibrated" in rev.output and "stack: stacked" in rev.output


def _cli(night, *args, columns=100):
    env = {**night["env"], "COLUMNS": str(columns)}
    return night["runner"].invoke(main, ["--db", night["url"], *map(str, args)], env=env, catch_exceptions=False)


def test_provenance_summary_tree_and_used_by_fit_the_terminal(night):
    """Issue 13: the stack's provenance is a summary of a few lines by default (it was 688
    lines, up to 362 characters), the tree with --tree, every line within the terminal."""
    with session_scope(night["engine"]) as session:
        stack = _frames(session, "stacked")[0]
        stack_path = session.scalar(select(Copy.path).where(Copy.frame_id == stack.id, Copy.is_current))
        bias = _frames(session, "master_bias")[0]
        bias_path = session.scalar(select(Copy.path).where(Copy.frame_id == bias.id, Copy.is_current))
    summary = _cli(night, "provenance", stack_path)
    lines = summary.stdout.splitlines()
    assert summary.exit_code == 0 and len(lines) <= 20 and max(map(len, lines)) <= 100
    assert "raw frames: 31 (16 light, 5 bias, 5 dark, 5 flat)" in summary.stdout
    text = " ".join(summary.stdout.split())  # the steps line wraps since the mask's step joined it
    assert "16 calibrate" in text and "16 register" in text and "1 stack" in text and "1 master_badpix" in text
    assert "total exposure: 16 min" in summary.stdout
    assert sum(line.lstrip().startswith("master: master_") for line in lines) == 4  # bias, dark, flat, mask
    tree = _cli(night, "provenance", "--tree", stack_path, columns=90).stdout.splitlines()
    assert len(tree) > 100 and max(map(len, tree)) <= 90
    used = _cli(night, "provenance", "--used-by", bias_path).stdout.splitlines()
    assert max(map(len, used)) <= 100
    stack_line = next(i for i, line in enumerate(used) if "stack: stacked" in line)
    parent = next(line for line in reversed(used[:stack_line]) if "register: registered" in line)
    indent = len(used[stack_line]) - len(used[stack_line].lstrip())
    assert indent > len(parent) - len(parent.lstrip())  # the stack under a registered frame's line


def test_show_a_light_and_the_stack(night):
    light = min((night["root"] / "2025-06-01_arcsat").glob("XO1-b_z_*.fits"))
    shown = _cli(night, "show", light)
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "exposure_time_s  60 s" in out and "EXPTIME" in out and "IMAGETYP='LIGHT'" in out
    assert str(light) in out and "current, canonical" in out
    with session_scope(night["engine"]) as session:
        masters = {f.image_type: f.id for f in _frames(session, "master_bias") + _frames(session, "master_dark")
                   + _frames(session, "master_flat")}
        stack = _frames(session, "stacked")[0]
        light_frame = session.scalar(select(Frame).join(Copy).where(Copy.path == str(light)))
        products = len(used_by(session, light_frame))
    for kind in ("bias", "dark", "flat"):
        assert f"{kind}: exact #{masters['master_' + kind]} master_{kind}_" in out
    assert "provenance: a raw frame" in out and f"used by {products} product(s)" in out and products >= 3
    assert "\nOBJECT  = 'XO1-b" in out  # the whole header, card by card
    by_id = _cli(night, "show", stack.id)
    assert by_id.exit_code == 0 and "total exposure 16 min" in by_id.stdout
    assert "raw frames: 31" in by_id.stdout and "<- stack" in by_id.stdout
    data = json.loads(_cli(night, "show", stack.id, "--json").stdout)
    assert data["frame_id"] == stack.id and data["values"]["exposure_time_s"] == {"value": 60.0, "from": "EXPTIME"}
    missing = _cli(night, "show", 999999)
    assert missing.exit_code == 1 and missing.output.startswith("archive: error: no frame 999999")


def test_summary_keeps_products_apart_and_counts_the_stack_total(night):
    raw = json.loads(_cli(night, "summary", "--by", "night", "--format", "json").stdout)
    assert [(r["night"], r["frames"]) for r in raw] == [("2025-06-01", 32)]
    products = {r["image_type"]: r for r in json.loads(
        _cli(night, "summary", "--products", "--by", "image_type", "--format", "json").stdout)}
    assert products["stacked"]["frames"] == 1 and products["stacked"]["exposure_h"] == pytest.approx(960 / 3600)
    assert products["calibrated"]["frames"] == 17 and "light" not in products


def _counts(engine):
    with session_scope(engine) as session:
        return {
            "frames": session.scalar(select(func.count()).select_from(Frame)),
            "copies": session.scalar(select(func.count()).select_from(Copy)),
            "reductions": session.scalar(select(func.count()).select_from(Reduction)),
            "inputs": session.scalar(select(func.count()).select_from(ReductionInput)),
            "selections": session.scalar(select(func.count()).select_from(CalibrationSelection)),
        }


def test_second_run_does_nothing(night):
    before = _counts(night["engine"])
    result = night["runner"].invoke(main, night["args"][1:], env=night["env"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 new file(s), 0 master(s) built" in result.output and "0 calibrated" in result.output
    assert "already up to date" in result.output
    after = _counts(night["engine"])
    assert {k: after[k] for k in after if k != "copies"} == {k: before[k] for k in before if k != "copies"}
    assert after["copies"] == before["copies"]


def test_dry_run_writes_nothing(night):
    before = _counts(night["engine"])
    result = night["runner"].invoke(main, night["args"][1:] + ["--dry-run"], env=night["env"])
    assert result.exit_code == 0 and "would ingest" in result.output
    assert _counts(night["engine"]) == before


def test_stale_after_marking_a_master_bad_and_reduce_stale(night):
    runner, url, env = night["runner"], night["url"], night["env"]
    assert runner.invoke(main, ["--db", url, "stale"], env=env).stdout.strip() == ""
    with session_scope(night["engine"], write=True) as session:
        flat = _frames(session, "master_flat")[0]
        session.get(Master, flat.id).is_bad = True
    out = runner.invoke(main, ["--db", url, "stale", "--format", "json"], env=env)
    rows = json.loads(out.stdout)
    table = runner.invoke(main, ["--db", url, "stale"], env={**env, "COLUMNS": "100"}).stdout.splitlines()
    assert len(table) == 1 + len(rows) and max(map(len, table)) <= 100  # issue 13: it was 250 wide
    steps = [r["step"] for r in rows]
    assert steps.count("calibrate") == 17 and steps.count("stack") == 1 and steps.count("register") == 17
    assert all("marked bad" in r["reasons"] for r in rows if r["step"] == "calibrate")
    result = runner.invoke(main, ["-q", "--db", url, "reduce", "--stale", "--workers", "2",
                                  "--output", str(night["base"] / "reduced")], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "17 calibrated" in result.output and "1 stacked" in result.output
    assert runner.invoke(main, ["--db", url, "stale"], env=env).stdout.strip() == ""
    with session_scope(night["engine"]) as session:
        stacks = _frames(session, "stacked")
        assert len(stacks) == 2  # the old stack stays, as history
        newest = max(stacks, key=lambda f: f.id)
        leaves = raw_leaves(provenance_tree(session, newest))
        types = [session.get(Frame, i).image_type for i in leaves]
        assert "flat" not in types and types.count("light") == 16


def test_night_and_reduce_print_what_they_made(night):
    """Every product command says where its stacks and masters went (issue 13)."""
    from archive.db.models import Copy

    output = night["result"].output
    with session_scope(night["engine"]) as session:
        def paths(image_type):
            return sorted(session.scalars(select(Copy.path).join(Frame, Frame.id == Copy.frame_id)
                                          .where(Frame.image_type == image_type)))
        stacks = paths("stacked")
        masters = paths("master_bias") + paths("master_dark") + paths("master_flat") + paths("master_badpix")
    printed_stacks = [line.strip()[len("stack: "):] for line in output.splitlines() if line.strip().startswith("stack: ")]
    printed_masters = [line.strip()[len("master: "):] for line in output.splitlines() if line.strip().startswith("master: ")]
    assert len(printed_stacks) == 1 and set(printed_stacks) <= set(stacks)  # (other tests may add stacks later)
    assert len(printed_masters) == 4 and set(printed_masters) <= set(masters)  # and the bad-pixel mask
    assert all(Path(p).is_file() for p in printed_stacks + printed_masters)
    assert f"products under {night['base'] / 'reduced'}" in output
