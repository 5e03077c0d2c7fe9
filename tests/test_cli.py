"""The command line: help and README for every command, output formats, exit statuses,
clear errors, and every named report on both backends."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from archive.cli import main
from archive.reports import load_queries

README = Path(__file__).resolve().parents[1] / "README.md"


def all_commands(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix}{name} ")


def run(*args, db=None, input=None, columns=120):
    """``archive ARGS`` through click's runner, tables fitted to ``columns`` cells (COLUMNS)."""
    runner = CliRunner()
    return runner.invoke(main, [*(["--db", str(db)] if db else []), *map(str, args)], input=input,
                         catch_exceptions=False, env={"COLUMNS": str(columns)})


@pytest.mark.parametrize("name, command", list(all_commands(main)), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_and_is_in_the_readme(name, command):
    assert command.help and len(command.help.strip()) > 20
    result = run(*name.split(), "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    assert f"archive {name}" in README.read_text(), f"'archive {name}' is not in README.md"


@pytest.fixture
def ingested(db_url, arcsat_night, tmp_path):
    night = tmp_path / "20250601"
    shutil.copytree(arcsat_night, night)
    (night / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    result = run("--quiet", "ingest", night, db=db_url)
    assert result.exit_code == 1, result.output  # one file could not be read
    return db_url


def test_ingest_prints_a_summary_and_exit_status(ingested, tmp_path):
    result = run("ingest", tmp_path / "20250601", db=ingested)
    assert "unchanged: 32" in result.output and "problems: 1" in result.output
    assert "broken.fits: truncated" in result.output
    assert result.exit_code == 1
    (tmp_path / "20250601" / "broken.fits").unlink()
    assert run("ingest", tmp_path / "20250601", db=ingested).exit_code == 0
    missing = run("ingest", tmp_path / "nowhere", db=ingested)
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_frames_filters_and_formats(ingested):
    result = run("frames", "--type", "light", "--target", "xo1 b", "--format", "json", db=ingested)
    rows = json.loads(result.output)
    assert len(rows) == 16 and {r["target"] for r in rows} == {"XO1-b"}
    assert all(r["path"].endswith(".fits") for r in rows)
    csv = run("frames", "--type", "flat", "--min-exposure", "80", "--format", "csv", db=ingested).output.splitlines()
    assert csv[0].startswith("id,night,date_obs") and len(csv) == 1 + 4
    night = run("frames", "--night", "2025-06-01", "--type", "dark", db=ingested)
    assert night.output.count("dcam-spare") == 5
    empty = run("frames", "--night", "2025-06-02", db=ingested)
    assert empty.exit_code == 0 and "(no rows)" in empty.output


def test_copyback_takes_the_frame_filters_of_frames(ingested, tmp_path):
    flats = json.loads(run("frames", "--type", "flat", "--min-exposure", "80", "--format", "json", db=ingested).output)
    assert len(flats) == 4
    dest = tmp_path / "flats"
    result = run("copyback", "--type", "flat", "--min-exposure", "80", "--to", dest, "--dry-run", db=ingested)
    assert result.exit_code == 0 and "would copy 4 file(s)" in result.output, result.output
    assert {line.split(" -> ")[0] for line in result.output.splitlines() if " -> " in line} == {r["path"] for r in flats}
    for args, copied in ((["--night", "2025-06-02"], 0), (["--night", "2025-06-01", "--max-exposure", "80"], 1)):
        result = run("copyback", "--type", "flat", *args, "--to", dest, "--dry-run", db=ingested)
        assert result.exit_code == 0 and f"would copy {copied} file(s)" in result.output, (args, result.output)


def test_summary_and_problems(ingested):
    rows = json.loads(run("summary", "--by", "image_type", "--format", "json", db=ingested).output)
    assert {r["image_type"]: r["frames"] for r in rows} == {"bias": 5, "dark": 5, "flat": 5, "light": 17}
    light = next(r for r in rows if r["image_type"] == "light")
    assert light["exposure_h"] == pytest.approx((16 * 60 + 30) / 3600, abs=1e-3)
    bad = run("summary", "--by", "colour", db=ingested)
    assert bad.exit_code == 2 and "unknown key" in bad.output
    problems = json.loads(run("problems", "--format", "json", db=ingested).output)
    assert [Path(p["path"]).name for p in problems] == ["broken.fits"] and problems[0]["severity"] == "error"


def test_every_named_report_runs(ingested):
    queries = load_queries()
    assert {"nights", "integration_by_target_filter", "problems"} <= set(queries)
    for name, query in queries.items():
        assert query.title and query.description
        result = run("report", name, "--format", "json", db=ingested)
        assert result.exit_code == 0, (name, result.output)
        json.loads(result.output)
    nights = json.loads(run("report", "nights", "--format", "json", db=ingested).output)
    assert [(n["night"], n["light"], n["bias"]) for n in nights] == [("2025-06-01", 17, 5)]
    by_target = json.loads(run("report", "integration_by_target_filter", "--param", "instrument=dcam-spare",
                               "--format", "json", db=ingested).output)
    assert {(r["target"], r["frames"]) for r in by_target} == {("XO1-b", 16), ("43Bet Com", 1)}
    none = json.loads(run("report", "integration_by_target_filter", "--param", "instrument=other", "--format", "json",
                          db=ingested).output)
    assert none == []
    errors = json.loads(run("report", "problems", "--param", "severity=error", "--format", "json", db=ingested).output)
    assert len(errors) == 1


def test_report_errors_are_one_clear_line(ingested):
    unknown = run("report", "nosuch", db=ingested)
    assert unknown.exit_code == 1 and unknown.output.startswith("archive: error: no report named 'nosuch'")
    bad_param = run("report", "nights", "--param", "colour=red", db=ingested)
    assert bad_param.exit_code == 1 and "has no parameter" in bad_param.output
    malformed = run("report", "nights", "--param", "instrument", db=ingested)
    assert malformed.exit_code == 2 and "key=value" in malformed.output
    listing = run("report", "--list", db=ingested)
    assert "nights: Observing nights" in listing.output


def test_unreachable_database_is_one_line_not_a_traceback():
    result = run("frames", db="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert result.exit_code == 1
    assert result.output.startswith("archive: error: cannot open the catalogue") and "Traceback" not in result.output


def test_installed_command_end_to_end(tmp_path, arcsat_night):
    exe = shutil.which("archive")
    assert exe, "the console script 'archive' is not installed"
    db = tmp_path / "c.sqlite"
    done = subprocess.run([exe, "--quiet", "--db", db, "ingest", arcsat_night], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "new frames: 32 (5 bias, 5 dark, 5 flat, 17 light)" in done.stdout
    summary = subprocess.run([exe, "--db", db, "summary", "--by", "night", "--format", "csv"], capture_output=True, text=True)
    assert summary.stdout.splitlines()[1].startswith("2025-06-01,32,32,")


def test_environment_and_flag_choose_the_database(tmp_path, monkeypatch, arcsat_night):
    env_db, flag_db = tmp_path / "env.sqlite", tmp_path / "flag.sqlite"
    monkeypatch.setenv("ARCHIVE_DB", str(env_db))
    assert run("--quiet", "ingest", arcsat_night / "Bias_BIN1_20250602_032138.fits").exit_code == 0
    assert env_db.exists() and not flag_db.exists()
    assert run("--quiet", "ingest", arcsat_night / "Bias_BIN1_20250602_032152.fits", db=flag_db).exit_code == 0
    assert flag_db.exists()
    assert json.loads(run("frames", "--format", "json").output)[0]["path"].endswith("032138.fits")


def test_schema_commands_give_one_line_errors(tmp_path):
    fresh = tmp_path / "new" / "folder" / "c.sqlite"
    assert run("db", "upgrade", db=fresh).output.startswith("schema at ")
    assert "catalogue: " in run("db", "current", db=fresh).output
    unknown = run("db", "upgrade", "nosuch", db=fresh)
    assert unknown.exit_code == 1 and unknown.output.startswith("archive: error: schema revision 'nosuch'")
    down = run("db", "downgrade", "base", "--yes", db=fresh)
    assert down.exit_code == 0 and "schema at base" in down.output
    unreachable = run("db", "current", db="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert unreachable.exit_code == 1 and unreachable.output.startswith("archive: error: cannot reach the catalogue")
