"""Fixtures: every database test runs on SQLite (a file in tmp_path) and on PostgreSQL.

PostgreSQL: ``ARCHIVE_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
names a server database used only to create others. The session migrates one template
database; each test gets a fresh copy (``CREATE DATABASE ... TEMPLATE``), dropped afterwards,
so tests (and parallel test runs) never see each other's rows. When the server cannot be
reached the PostgreSQL tests fail; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from archive.db.migrate import upgrade
from archive.db.session import open_catalogue

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PG_ADMIN_URL = os.environ.get("ARCHIVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads the developer's configuration or data folders, or ARCHIVE_* variables."""
    home = tmp_path_factory.mktemp("home")
    for name in [n for n in os.environ if n.startswith("ARCHIVE_") and n != "ARCHIVE_TEST_PG_URL"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))


def _admin():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def _drop(admin, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def scratch_database(template: str | None = None):
    """A new PostgreSQL database (a copy of ``template``, else empty) for one test: its URL,
    dropped afterwards."""
    name = f"archive_t_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


@contextmanager
def catalogue_url(request, folder: Path):
    """The URL of a catalogue for a test parametrized by backend (``request.param``): a SQLite
    file in ``folder`` (not created), or a scratch PostgreSQL database copied from the migrated
    template, dropped afterwards."""
    if request.param == "sqlite":
        yield str(folder / "catalogue.sqlite")
        return
    with scratch_database(request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture(scope="session")
def pg_template():
    """A migrated PostgreSQL database to copy per test (fails, never skips, without a server)."""
    name = f"archive_tpl_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL tests cannot run: {PG_ADMIN_URL} is unreachable ({exc})", pytrace=False)
    url = make_url(PG_ADMIN_URL).set(database=name)
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    yield name
    _drop(admin, name)
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL of an empty catalogue at the current schema, on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "catalogue.sqlite"
        open_catalogue(path).dispose()
        yield str(path)
        return
    with scratch_database(request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def engine(db_url):
    """An open catalogue engine on each backend."""
    engine = open_catalogue(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def shared_data() -> Path:
    """The real frames in ../shared/data (read-only: copy before writing)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DATA} is missing", pytrace=False)
    return SHARED_DATA


@pytest.fixture
def shared_fits_count(shared_data) -> int:
    """How many files under ../shared/data have a FITS name, counted here independently of
    archive's scanner (the sets grow; tests must not hard-code their size)."""
    endings = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fits.gz", ".fit.gz")
    return sum(1 for path in shared_data.rglob("*") if path.is_file() and path.name.lower().endswith(endings))


@pytest.fixture
def arcsat_night(shared_data) -> Path:
    """The real ARCSAT night (5 bias, 5 dark, 5 flat, 17 light; read-only)."""
    return shared_data / "arcsat-uw-astr480" / "data" / "20250601"


@pytest.fixture
def copy_tree(tmp_path):
    """Copy a folder into tmp_path (keeping mtimes), for tests that change files."""

    def _copy(source: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or source.name)
        shutil.copytree(source, target)
        return target

    return _copy
