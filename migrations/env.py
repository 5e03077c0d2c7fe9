"""Alembic environment of the archive catalogue.

The database comes from ``config.attributes['engine']`` when archive calls alembic itself,
else from ``-x db=URL`` or ``ARCHIVE_DB`` when the ``alembic`` command is run by hand.
"""

from alembic import context
from sqlalchemy import create_engine

from archive.db.base import Base
import archive.db  # noqa: F401 - imports every model module, registering the tables
from archive.db.session import database_url

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        import os

        url = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("ARCHIVE_DB")
        engine = create_engine(database_url(url))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("archive's migrations run online only: give a database with -x db=URL")
run_migrations()
