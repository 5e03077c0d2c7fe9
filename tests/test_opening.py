"""Opening the catalogue from the command line (issue 13): a bad --db is one line, reading
commands never create a catalogue, a read-only SQLite file can be read, an empty database
gets the schema on first ingest and an outdated one is never upgraded silently."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from archive.cli import main
from archive.db.migrate import upgrade
from archive.db.session import current_revision, database_url
from tests.conftest import scratch_database


def run(*args, db=None):
    return CliRunner().invoke(main, [*(["--db", str(db)] if db else []), *map(str, args)], catch_exceptions=False)


def one_error_line(result, *words):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("archive: error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]


def test_a_url_of_no_known_database_is_one_line():
    one_error_line(run("frames", db="notaurl://x"), "notaurl://x")
    one_error_line(run("db", "current", db="notaurl://x"), "notaurl://x")


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a catalogue\n" * 20)
    one_error_line(run("summary", db=path), str(path), "not a database")
    one_error_line(run("ingest", tmp_path, db=path), str(path), "not a database")
    assert path.read_text().startswith("these are my notes")


@pytest.mark.parametrize("command", [("frames",), ("summary",), ("problems",), ("report", "nights"), ("stale",),
                                     ("masters", "list")])
def test_a_reading_command_does_not_create_a_catalogue(tmp_path, command):
    typo = tmp_path / "catalogeu.sqlite"
    one_error_line(run(*command, db=typo), str(typo), "no catalogue")
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_ingest_creates_the_catalogue(tmp_path, arcsat_night):
    path = tmp_path / "new" / "c.sqlite"
    assert run("--quiet", "ingest", arcsat_night / "Bias_BIN1_20250602_032138.fits", db=path).exit_code == 0
    assert len(json.loads(run("frames", "--format", "json", db=path).output)) == 1


@pytest.fixture
def read_only(tmp_path):
    """Make a file read-only for this process, also for root (immutable attribute)."""
    made = []

    def _make(path):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            path.chmod(0o444)
        made.append(path)

    yield _make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


def test_a_read_only_sqlite_file_can_be_read(tmp_path, arcsat_night, read_only):
    path = tmp_path / "c.sqlite"
    assert run("--quiet", "ingest", arcsat_night, db=path).exit_code == 0
    before = path.read_bytes()
    read_only(path)
    with pytest.raises(OSError):
        open(path, "r+b").close()
    frames = run("frames", "--format", "json", db=path)
    assert frames.exit_code == 0, frames.output
    assert len(json.loads(frames.output)) == 32
    assert run("summary", db=path).exit_code == 0
    refused = run("--quiet", "ingest", arcsat_night, db=path)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "read-only" in refused.output or "readonly" in refused.output
    assert path.read_bytes() == before


@pytest.fixture
def empty_pg():
    with scratch_database() as url:
        yield url


def test_an_empty_postgresql_database_gets_the_schema_on_first_ingest(empty_pg, arcsat_night):
    refused = run("frames", db=empty_pg)
    one_error_line(refused, "empty", f"archive --db {database_url(empty_pg)} db upgrade")
    result = run("--quiet", "ingest", arcsat_night / "Bias_BIN1_20250602_032138.fits", db=empty_pg)
    assert result.exit_code == 0, result.output
    assert len(json.loads(run("frames", "--format", "json", db=empty_pg).output)) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_outdated_catalogue_is_not_upgraded_and_the_hint_names_it(backend, tmp_path, empty_pg, arcsat_night):
    url = str(tmp_path / "old.sqlite") if backend == "sqlite" else empty_pg
    engine = create_engine(database_url(url))
    upgrade(engine, "0001")
    for command in (("frames",), ("ingest", arcsat_night)):
        result = run(*command, db=url)
        one_error_line(result, "revision 0001", f"archive --db {database_url(url) if backend != 'sqlite' else url} db upgrade")
        assert current_revision(engine) == "0001"
    engine.dispose()
