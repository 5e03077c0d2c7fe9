"""Schema migrations through alembic, called from Python (``archive db upgrade``) or the
``alembic`` command (``alembic.ini`` at the top of the repository)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from archive.errors import DatabaseError
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


def _run(step, engine: Engine, revision: str) -> None:
    try:
        step(alembic_config(engine), revision)
    except CommandError as exc:
        raise DatabaseError(f"schema revision {revision!r}: {exc}") from exc
    except DBAPIError as exc:
        reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        raise DatabaseError(f"cannot migrate {engine.url.render_as_string(hide_password=True)}: {reason}") from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default the newest).

    Raises
    ------
    DatabaseError
        Unknown revision, or the database cannot be reached.
    """
    _run(command.upgrade, engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` removes every table).

    Raises
    ------
    DatabaseError
        Unknown revision, or the database cannot be reached.
    """
    _run(command.downgrade, engine, revision)
