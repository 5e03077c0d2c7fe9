"""Projects: a target gathered over many nights (``archive project``), as catalogue rows.

A project is a query (target, filters, DATE-OBS range, optional position and footprint
filters) plus a folder
laid out as dss-automation's ``<project>/lights/<filter>/`` and a goal of integration per
filter. Which frames belong to it is always computed from the catalogue; what has been
collected is known from the catalogue's copies under the project's folder.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive.db.base import Base


class Project(Base):
    """A named multi-night project.

    ``filters`` lists the filters in the order given (empty: every filter found);
    ``since``/``until`` bound DATE-OBS (UTC); ``ra_deg``/``dec_deg`` optionally give the
    reference position for position matching, ``radius_arcmin`` its radius (NULL: the
    configured one). ``cone_*`` and ``covers_*`` are the footprint filters of
    :class:`archive.db.frames.FrameFilter` (deg; NULL: none), read as :attr:`cone` and
    :attr:`covers`; a project defined by them alone has an empty ``target``. ``folder`` is the
    absolute path of the project's folder.
    """

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    target: Mapped[str] = mapped_column(String(200))
    filters: Mapped[list[str]] = mapped_column(JSON)
    since: Mapped[dt.datetime | None] = mapped_column(DateTime)
    until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ra_deg: Mapped[float | None] = mapped_column(Float)
    dec_deg: Mapped[float | None] = mapped_column(Float)
    radius_arcmin: Mapped[float | None] = mapped_column(Float)
    cone_ra_deg: Mapped[float | None] = mapped_column(Float)
    cone_dec_deg: Mapped[float | None] = mapped_column(Float)
    cone_radius_deg: Mapped[float | None] = mapped_column(Float)
    covers_ra_deg: Mapped[float | None] = mapped_column(Float)
    covers_dec_deg: Mapped[float | None] = mapped_column(Float)
    folder: Mapped[str] = mapped_column(String(4096))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    collected_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    goals: Mapped[list[ProjectGoal]] = relationship(
        back_populates="project", cascade="all, delete-orphan", order_by="ProjectGoal.filter_name"
    )

    @property
    def cone(self) -> tuple[float, float, float] | None:
        """(RA, Dec, radius) in deg of the cone the footprints must meet, or None."""
        values = (self.cone_ra_deg, self.cone_dec_deg, self.cone_radius_deg)
        return None if None in values else values

    @property
    def covers(self) -> tuple[float, float] | None:
        """(RA, Dec) in deg of the position the footprints must contain, or None."""
        values = (self.covers_ra_deg, self.covers_dec_deg)
        return None if None in values else values


class ProjectGoal(Base):
    """The integration a project wants in one filter, in seconds."""

    __tablename__ = "project_goals"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    filter_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    goal_s: Mapped[float] = mapped_column(Float)

    project: Mapped[Project] = relationship(back_populates="goals")
