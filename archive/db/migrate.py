"""Schema migrations through alembic, called from Python (``archive db upgrade``) or the
``alembic`` command (``alembic.ini`` at the top of the repository)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from archive.resources import resource_dir


def alembic_config(engine: Engine | None = None) -> Config:
    """An alembic configuration pointing at the bundled ``migrations/`` folder.

    When ``engine`` is given, ``migrations/env.py`` runs on one of its connections.
    """
    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest revision of the bundled migrations."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` for a database never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default the newest)."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` removes every table)."""
    command.downgrade(alembic_config(engine), revision)
