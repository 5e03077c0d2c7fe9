"""The catalogue database: models, engine and session set-up, schema migrations.

Only this package knows SQLAlchemy's machinery beyond the ``Session`` and ``select``; domain
code receives a ``Session`` explicitly.
"""

from archive.db.models import Copy, Frame, IngestProblem, IngestRun, Instrument, Night
from archive.db.projects import Project, ProjectGoal  # noqa: F401 - registers the project tables
from archive.db.session import open_catalogue, session_scope

__all__ = [
    "Copy", "Frame", "IngestProblem", "IngestRun", "Instrument", "Night",
    "open_catalogue", "session_scope",
]
