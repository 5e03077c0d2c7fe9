"""Terminal output and look-ups (issue 13): tables that fit the terminal with values rounded to
their meaning, CSV and JSON as stored, summaries that count exposures once and keep products
apart, case-insensitive --instrument, goals with units, one-line answers for empty selections,
and a quick start. CLI tests run through click's runner on both backends."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from archive.cli import main
from archive.cli.table import escape_controls, format_duration, render_table
from archive.db.models import Frame
from archive.db.session import open_catalogue, session_scope
from tests.factories import nina_header, write_fits

ESC = "\x1b"


def run(*args, db=None, columns=100):
    """``archive ARGS`` with tables fitted to ``columns`` cells; stdout and stderr apart."""
    return CliRunner().invoke(main, [*(["--db", str(db)] if db else []), *map(str, args)], catch_exceptions=False,
                              env={"COLUMNS": str(columns)})


def _escape_object(path: Path) -> Path:
    """OBJECT with a terminal escape sequence: '~' written as ESC into the header bytes."""
    raw = path.read_bytes()
    header_end = raw.index(b"END" + b" " * 77)
    path.write_bytes(raw[:header_end].replace(b"~", ESC.encode()) + raw[header_end:])
    return path


@pytest.fixture
def catalogue(db_url, arcsat_night, tmp_path):
    """The ARCSAT night plus: a light without binning keywords, one exposure in two files with
    different bytes (a duplicate), a light whose OBJECT holds an escape sequence, and a stack of
    74 frames made elsewhere (TOTEXP 4440 s, EXPTIME 60 s)."""
    root = tmp_path / "night"
    shutil.copytree(arcsat_night, root / "arcsat")
    nobin = nina_header(DATE_OBS="x")
    nobin.pop("DATE_OBS")
    for key in ("XBINNING", "YBINNING"):
        nobin.pop(key)
    write_fits(root / "zwo" / "m31_nobin.fits", nobin, seed=1)
    late = {"DATE-OBS": "2026-11-20T23:01:02.123", "DATE-LOC": "2026-11-21T00:01:02.123"}
    write_fits(root / "zwo" / "m31_a.fits", nina_header(**late), seed=2)
    write_fits(root / "zwo" / "m31_a_again.fits", nina_header(**late), seed=3)  # same exposure, other bytes
    _escape_object(write_fits(root / "zwo" / "escape.fits", nina_header(
        OBJECT="~[31mRed~[0m", **{"DATE-OBS": "2026-11-21T01:00:00.000"}), seed=4))
    write_fits(root / "zwo" / "m31_stack.fits", nina_header(
        "STACKED", EXPTIME=60.0, EXPOSURE=60.0, NCOMBINE=74, TOTEXP=4440.0,
        **{"DATE-OBS": "2026-11-21T02:00:00.000"}), seed=5)
    result = run("-q", "ingest", root, db=db_url)
    assert result.exit_code == 0, result.output
    return db_url


def _stored(db_url, column, **where):
    engine = open_catalogue(db_url)
    try:
        with session_scope(engine) as session:
            query = select(getattr(Frame, column))
            for key, value in where.items():
                query = query.where(getattr(Frame, key) == value)
            return session.scalars(query).all()
    finally:
        engine.dispose()


# -- tables for people -----------------------------------------------------------------------


def test_frames_table_fits_the_terminal_with_units_and_blanks(catalogue):
    for width in (80, 100, 160):
        result = run("frames", db=catalogue, columns=width)
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert len(lines) == 1 + 32 + 5
        assert max(map(len, lines)) <= width, (width, max(map(len, lines)))
        assert "exp [s]" in lines[0] and "None" not in result.stdout and "nan" not in result.stdout.lower()
    wide = run("frames", "--type", "flat", db=catalogue, columns=200).stdout
    assert "ccd [deg C]" in wide and "set [deg C]" in wide
    assert "-24.979408" not in wide and "-25" in wide  # CCD-TEMP to 0.1 deg C
    flat = run("frames", "--type", "flat", "--columns", "id,exposure_time_s,ccd_temp_c", db=catalogue).stdout
    assert sorted(line.split()[1] for line in flat.splitlines()[1:]) == ["76.15", "82.22", "82.36", "82.4", "82.69"]


def test_integer_columns_stay_integers_when_another_row_is_null(catalogue):
    table = run("frames", "--instrument", "ZWO ASI2600MM Pro", "--columns", "target,binning_x,exposure_time_s",
                db=catalogue).stdout.splitlines()
    assert table[0].split() == ["target", "bin", "x", "exp", "[s]"]
    cells = [line.split() for line in table[1:]]
    assert ["M", "31", "120"] in cells  # the light without XBINNING: blank, not None or nan
    assert ["M", "31", "1", "120"] in cells and not any("1.0" in c for c in cells)
    rows = list(csv.DictReader(io.StringIO(run("frames", "--format", "csv", db=catalogue).stdout)))
    assert {r["binning_x"] for r in rows} == {"1", ""}  # never 1.0
    records = json.loads(run("frames", "--format", "json", db=catalogue).stdout)
    assert {r["binning_x"] for r in records} == {1, None}


def test_control_characters_are_escaped_in_tables_and_kept_in_csv_and_json(catalogue):
    stored = _stored(catalogue, "target", target_key="31mred0m")
    assert stored == [f"{ESC}[31mRed{ESC}[0m"]
    table = run("frames", "--columns", "id,target", db=catalogue).stdout
    assert ESC not in table and "\\x1b[31mRed\\x1b[0m" in table
    rows = list(csv.DictReader(io.StringIO(run("frames", "--format", "csv", db=catalogue).stdout)))
    assert stored[0] in {r["target"] for r in rows}  # CSV exports the value as stored
    records = json.loads(run("frames", "--format", "json", db=catalogue).stdout)
    assert stored[0] in {r["target"] for r in records}


def test_csv_and_json_keep_full_precision(catalogue):
    stored = sorted(_stored(catalogue, "ccd_temp_c", image_type="dark"))
    records = json.loads(run("frames", "--type", "dark", "--format", "json", db=catalogue).stdout)
    assert sorted(r["ccd_temp_c"] for r in records) == stored
    assert any(len(repr(v)) > 8 for v in stored)  # values that a table rounds
    rows = list(csv.DictReader(io.StringIO(run("frames", "--type", "dark", "--format", "csv", db=catalogue).stdout)))
    assert sorted(float(r["ccd_temp_c"]) for r in rows) == stored


def test_columns_option_chooses_lists_and_refuses_unknown_names(catalogue):
    chosen = run("frames", "--type", "bias", "--columns", "path,id", db=catalogue, columns=300).stdout.splitlines()
    assert chosen[0].split() == ["path", "id"] and chosen[1].split()[0].endswith(".fits")
    listing = run("frames", "--columns", "list", db=catalogue).stdout
    assert "exposure_time_s" in listing and "exp [s]" in listing and "duplicate_of_id" in listing
    csv_two = run("frames", "--type", "bias", "--columns", "id,exposure_time_s", "--format", "csv", db=catalogue)
    assert csv_two.stdout.splitlines()[0] == "id,exposure_time_s"
    unknown = run("frames", "--columns", "id,colour", db=catalogue)
    assert unknown.exit_code == 2 and "colour" in unknown.output
    every = run("frames", "--columns", "all", db=catalogue, columns=80).stdout.splitlines()
    assert "duplicate of" in every[0] and max(map(len, every)) > 80  # everything, unshortened


def test_masters_missing_and_summary_fit(catalogue):
    missing = run("masters", "missing", db=catalogue)
    assert missing.exit_code == 0
    lines = missing.stdout.splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= 100 and "None" not in missing.stdout
    summary = run("summary", "--type", "light", db=catalogue).stdout
    assert "16 min" in summary and "exposure" in summary.splitlines()[0]


def test_table_rendering_rules():
    assert escape_controls(f"a{ESC}[2Jb\n\u202e") == "a\\x1b[2Jb\\n\\u202e"
    assert escape_controls("Café M 31") == "Café M 31"
    assert [format_duration(s) for s in (30, 990, 3600 * 12.5, 36000 + 59)] == ["30 s", "16.5 min", "12 h 30 min",
                                                                                "10 h 01 min"]
    lines, left_out = render_table(["id", "path", "exposure_time_s", "gain"],
                                   [(1, "/very/long/" + "x" * 100 + "/file_001.fits", 81.16400000000002, None),
                                    (22, None, 60.0, None)], width=60)
    assert max(map(len, lines)) <= 60 and lines[1].endswith("file_001.fits") is False
    assert "file_001.fits" in lines[1] and "…" in lines[1] and "81.164" in lines[1]
    assert left_out == ["gain"]  # all NULL: left out, named
    report, _ = render_table(["light", "light_h", "first_utc"], [(17, 0.275, "2025-06-02 03:21:41.040000")], width=80)
    assert report[0].split() == ["light", "light", "time", "first", "[UTC]"]
    assert report[1].split() == ["17", "16.5", "min", "2025-06-02", "03:21:41"]


# -- summary ---------------------------------------------------------------------------------


def test_summary_counts_exposures_once_and_keeps_products_apart(catalogue):
    by_target = {r["target"]: r for r in json.loads(run("summary", "--by", "target", "--format", "json",
                                                         db=catalogue).stdout)}
    m31 = by_target["M 31"]
    # three raw files of M 31: two exposures (one in two files with other bytes); the stack is a product
    assert m31["frames"] == 2 and m31["duplicates"] == 1 and m31["files"] == 3
    assert m31["exposure_h"] == pytest.approx(2 * 120 / 3600)
    raw = json.loads(run("summary", "--by", "night", "--format", "json", db=catalogue).stdout)
    assert sum(r["frames"] for r in raw) == 32 + 3
    products = json.loads(run("summary", "--products", "--by", "image_type", "--format", "json", db=catalogue).stdout)
    assert products == [{"image_type": "stacked", "frames": 1, "files": 1, "exposure_h": pytest.approx(4440 / 3600),
                         "duplicates": 0}]
    stacked = json.loads(run("summary", "--type", "stacked", "--by", "target", "--format", "json", db=catalogue).stdout)
    assert stacked[0]["exposure_h"] == pytest.approx(74 * 60 / 3600)


# -- look-ups and empty answers --------------------------------------------------------------


def test_instrument_matches_case_insensitively(catalogue):
    exact = json.loads(run("frames", "--instrument", "dcam-spare", "--format", "json", db=catalogue).stdout)
    other_case = json.loads(run("frames", "--instrument", "DCAM-Spare", "--format", "json", db=catalogue).stdout)
    assert len(exact) == 32 and [r["id"] for r in other_case] == [r["id"] for r in exact]


def test_goals_need_a_unit(catalogue, tmp_path):
    bare = run("project", "create", "p", "--target", "M 31", "--goal", "Ha=90", "--dir", tmp_path / "p", db=catalogue)
    assert bare.exit_code == 2 and "Ha=90m" in bare.output and "Traceback" not in bare.output
    good = run("project", "create", "p", "--target", "M 31", "--goal", "Ha=90m", "--dir", tmp_path / "p", db=catalogue)
    assert good.exit_code == 0, good.output
    status = json.loads(run("project", "status", "p", "--format", "json", db=catalogue).stdout)
    assert {r["filter"]: r["goal_h"] for r in status}["Ha"] == pytest.approx(1.5)


def test_empty_folder_and_empty_copyback_say_so_in_one_line(catalogue, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames tonight")
    result = run("ingest", empty, db=catalogue)
    assert result.exit_code == 0 and result.output == f"no FITS files under {empty} (1 other file(s) skipped)\n"
    dest = tmp_path / "gathered"
    result = run("copyback", "--target", "NGC 9999", "--to", dest, db=catalogue)
    assert result.exit_code == 0 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("no frame matches --target NGC 9999") and not dest.exists()
    result = run("copyback", "--type", "flat", "--night", "2025-06-02", "--to", dest, db=catalogue)
    assert result.output.count("\n") == 1 and "copied 0 file(s)" in result.output and not dest.exists()


# -- start-up --------------------------------------------------------------------------------


def _modules_after(args: list[str]) -> set[str]:
    """Top-level heavy packages imported by ``archive ARGS`` in a new process."""
    code = ("import sys\nfrom archive.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('MODULES:', ' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'pandas', 'numpy', 'astropy', 'scipy', 'ccdproc', 'importlib_metadata'})))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    return set(done.stdout.split("MODULES:")[-1].split())


def test_help_and_summary_import_only_what_they_use(tmp_path, arcsat_night):
    assert _modules_after(["--help"]) == set()
    db = tmp_path / "c.sqlite"
    assert run("-q", "ingest", arcsat_night, db=db).exit_code == 0
    assert _modules_after(["--db", str(db), "summary"]) == {"sqlalchemy"}
    assert _modules_after(["--db", str(db), "frames"]) == {"sqlalchemy"}
    # a second ingest of unchanged files reads none: no FITS or WCS library is loaded
    assert "astropy" not in _modules_after(["--db", str(db), "-q", "ingest", str(arcsat_night)])


def test_the_help_summaries_match_the_commands():
    import click

    group = main
    ctx = click.Context(group)
    for name, summary in group.summaries.items():
        command = group.get_command(ctx, name)
        first = " ".join(command.help.split("\n\n")[0].split())
        assert summary == first, name
    assert set(group.summaries) == set(group.list_commands(ctx))
