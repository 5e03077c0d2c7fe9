"""Declarative base with an explicit constraint naming convention (alembic needs stable names),
and the clock of the catalogue."""

import datetime as dt

from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from archive.files import path_from_text, path_to_text

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: The newest migration in ``migrations/versions``: the schema this code needs. Opening a
#: catalogue compares it with the database's ``alembic_version`` (a test checks that it is
#: alembic's head, so a new migration cannot be forgotten here).
SCHEMA_REVISION = "0016_products"


class Base(DeclarativeBase):
    """Base class of every catalogue table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FilePath(TypeDecorator):
    """A file path column: a ``String`` holding :func:`archive.files.path_to_text` of the path.

    Code reads and binds the path as Python names it (a str with surrogates for bytes that are
    not UTF-8, as :func:`os.scandir` gives it); the database holds valid UTF-8 text, the same
    on both backends. No migration: the column stays a ``VARCHAR``.
    """

    impl = String
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else path_to_text(str(value))

    def process_result_value(self, value, dialect):
        return None if value is None else path_from_text(value)


def utcnow() -> dt.datetime:
    """The current time as the catalogue stores times: naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
