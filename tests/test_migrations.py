"""The schema comes from the alembic migrations and matches the models, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import archive.db  # noqa: F401 - every model module
from archive.db.base import Base
from archive.db.migrate import downgrade, head_revision, upgrade
from archive.db.session import current_revision
from archive.db.session import database_url


def schema_diff(engine):
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_schema_revision_constant_is_the_head_migration():
    from archive.db.base import SCHEMA_REVISION

    assert SCHEMA_REVISION == head_revision()


def test_upgrade_head_matches_the_models(db_url):
    engine = create_engine(database_url(db_url))
    assert current_revision(engine) == head_revision()
    assert schema_diff(engine) == []
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(db_url):
    engine = create_engine(database_url(db_url))
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert schema_diff(engine) == []
    engine.dispose()


def test_a_new_sqlite_file_is_created_at_head(tmp_path):
    from archive.db.session import open_catalogue

    engine = open_catalogue(tmp_path / "sub" / "new.sqlite")
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_an_outdated_catalogue_is_refused_with_advice(tmp_path):
    import pytest

    from archive.db.session import open_catalogue
    from archive.errors import DatabaseError

    path = tmp_path / "old.sqlite"
    engine = create_engine(database_url(path))
    upgrade(engine, "0001")
    engine.dispose()
    if head_revision() == "0001":
        return
    with pytest.raises(DatabaseError, match=r"archive --db \S+ db upgrade"):
        open_catalogue(path)
