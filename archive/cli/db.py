"""``archive db``: create, upgrade, downgrade and inspect the catalogue schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.exc import DBAPIError

from archive.cli import AppContext, pass_app
from archive.db import migrate
from archive.db.session import current_revision, schema_engine
from archive.errors import DatabaseError


@contextmanager
def _engine(app: AppContext) -> Iterator:
    engine = schema_engine(app.settings.database_url)
    try:
        yield engine
    except DBAPIError as exc:
        reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        raise DatabaseError(f"cannot reach the catalogue {engine.url.render_as_string(hide_password=True)}: {reason}") from exc
    finally:
        engine.dispose()


@click.group()
def db() -> None:
    """Manage the catalogue schema (alembic migrations).

    \b
    Examples:
      archive db upgrade                          # create or bring the schema to the newest revision
      archive --db postgresql://postgres@localhost/astro db upgrade
      archive db current
    """


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Upgrade the schema to REVISION (default: the newest).

    \b
    Examples:
      archive db upgrade
      archive --db postgresql://astro@server/archive db upgrade
    """
    with _engine(app) as engine:
        migrate.upgrade(engine, revision)
        click.echo(f"schema at {current_revision(engine)}")


@db.command()
@click.argument("revision")
@click.confirmation_option(prompt="Downgrading can drop tables and their rows. Continue?")
@pass_app
def downgrade(app: AppContext, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' drops every table).

    \b
    Examples:
      archive db downgrade 0002
      archive --db test.sqlite db downgrade base --yes
    """
    with _engine(app) as engine:
        migrate.downgrade(engine, revision)
        click.echo(f"schema at {current_revision(engine) or 'base'}")


@db.command()
@pass_app
def current(app: AppContext) -> None:
    """Print the schema revision of the catalogue and the newest one this archive knows.

    \b
    Example:
      archive db current
    """
    with _engine(app) as engine:
        click.echo(f"catalogue: {current_revision(engine) or 'empty'}; newest: {migrate.head_revision()}")
