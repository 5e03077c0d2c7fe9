"""``archive db``: create, upgrade, downgrade and inspect the catalogue schema."""

from __future__ import annotations

import click
from sqlalchemy import create_engine

from archive.cli import AppContext, pass_app
from archive.db import migrate
from archive.db.session import database_url


def _raw_engine(app: AppContext):
    return create_engine(database_url(app.settings.database_url))


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
    """Upgrade the schema to REVISION (default: the newest)."""
    engine = _raw_engine(app)
    migrate.upgrade(engine, revision)
    click.echo(f"schema at {migrate.current_revision(engine)}")
    engine.dispose()


@db.command()
@click.argument("revision")
@click.confirmation_option(prompt="Downgrading can drop tables and their rows. Continue?")
@pass_app
def downgrade(app: AppContext, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' drops every table)."""
    engine = _raw_engine(app)
    migrate.downgrade(engine, revision)
    click.echo(f"schema at {migrate.current_revision(engine) or 'base'}")
    engine.dispose()


@db.command()
@pass_app
def current(app: AppContext) -> None:
    """Print the schema revision of the catalogue and the newest one this archive knows."""
    engine = _raw_engine(app)
    click.echo(f"catalogue: {migrate.current_revision(engine) or 'empty'}; newest: {migrate.head_revision()}")
    engine.dispose()
