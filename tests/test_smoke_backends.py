from sqlalchemy import select, func

from archive.db import Frame, session_scope


def test_fresh_catalogue_is_empty(engine):
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Frame)) == 0
