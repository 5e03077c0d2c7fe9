"""Which frames to gather, grouped into exposures (DATE-OBS de-duplication).

The rules (issue 5, ``shared/DESIGN.md`` "Identity"):

* **Selection** is a catalogue query (:func:`archive.db.frames.frame_query`): lights
  (``kind='raw'``) or calibrated lights (``kind='calibrated'``) of a target, optionally one
  filter and a DATE-OBS range, across every night. The target matches loosely by name
  (:func:`archive.db.frames.target_key`: "M 31" = "M31" = "m31") and, for frames that
  carry RA/Dec, by position: a frame lies within ``position_radius_arcmin`` of a *reference
  position*, which is ``--ra/--dec`` when given, else the position of any frame whose name
  matched. Name resolution (Sesame, SIMBAD) needs the network and is not used.
* **One copy per exposure.** Frames of one instrument with the same DATE-OBS are one exposure
  whatever their bytes (a compressed copy, an edited header): the kept frame is the one the
  catalogue holds as the original (``duplicate_of_id`` NULL), read from its canonical copy;
  the others are skipped, with the reason (:func:`duplicate_reason`). Frames without an
  instrument or DATE-OBS cannot be de-duplicated and count as their own exposure.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.coordinates import angular_separation
from sqlalchemy import Row
from sqlalchemy.orm import Session

from archive.db.bulk import chunked
from archive.db.frames import FrameFilter, frame_query
from archive.db.models import DERIVED_TYPES, Frame, Instrument
from archive.gather.config import GatherConfig, load_gather_config

#: ``Selection.kind`` -> the normalized image type it selects.
KINDS = {"raw": "light", "calibrated": "calibrated"}


@dataclass(frozen=True)
class Selection:
    """Which frames to gather.

    Attributes
    ----------
    target : str, optional
        Target name, matched loosely; also the ``{target}`` of destination names.
    filter_name : str, optional
        Filter, case-insensitive.
    night : date, optional
        Local observing night.
    since, until : datetime, optional
        ``since <= DATE-OBS < until`` (UTC).
    min_exposure_s, max_exposure_s : float, optional
        Exposure time range in s, inclusive.
    kind : {'raw', 'calibrated'}
        Raw lights, or the calibrated lights made by reduction.
    image_type : str, optional
        Any normalized image type instead of ``kind`` (e.g. 'flat').
    instrument : str, optional
        Instrument name, exact.
    ra_deg, dec_deg : float, optional
        A reference position (deg, ICRS): frames within the radius are selected too.
    radius_arcmin : float, optional
        Position-match radius (default the configured one); 0 turns position matching off.
    cone, covers : tuple of float, optional
        Footprint filters (:class:`archive.db.frames.FrameFilter`), deg.
    """

    target: str | None = None
    filter_name: str | None = None
    night: dt.date | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_exposure_s: float | None = None
    max_exposure_s: float | None = None
    kind: str = "raw"
    image_type: str | None = None
    instrument: str | None = None
    ra_deg: float | None = None
    dec_deg: float | None = None
    radius_arcmin: float | None = None
    cone: tuple[float, float, float] | None = None
    covers: tuple[float, float] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {self.kind!r}")
        if (self.ra_deg is None) != (self.dec_deg is None):
            raise ValueError("give both ra_deg and dec_deg, or neither")

    def frame_filter(self, *, with_target: bool = True) -> FrameFilter:
        """The :class:`FrameFilter` of everything but the position match; products remade
        since (superseded: :attr:`FrameFilter.current_only`) are never gathered."""
        return FrameFilter(
            image_type=self.image_type or KINDS[self.kind], filter_name=self.filter_name, night=self.night,
            target=self.target if with_target else None, instrument=self.instrument,
            since=self.since, until=self.until, min_exposure_s=self.min_exposure_s, max_exposure_s=self.max_exposure_s,
            cone=self.cone, covers=self.covers, current_only=True,
        )


#: The columns of the frame rows that exposures hold (and destination names are made of).
EXPOSURE_COLUMNS = (
    Frame.id, Frame.sha256, Frame.instrument_id, Instrument.name.label("instrument"), Frame.date_obs,
    Frame.date_obs_s, Frame.night, Frame.image_type, Frame.target, Frame.filter_name, Frame.exposure_time_s,
    Frame.binning_x, Frame.binning_y, Frame.ra_deg, Frame.dec_deg, Frame.duplicate_of_id,
)


@dataclass
class ExposureSelection:
    """The frames a :class:`Selection` matched, grouped into exposures.

    Attributes
    ----------
    groups : list of list of Row
        One list per exposure, the frame to keep first (the original before its duplicates,
        then by id); rows carry the columns of :data:`EXPOSURE_COLUMNS`.
    by_position : list of Row
        Frames selected by position whose name did not match.
    """

    groups: list[list[Row]] = field(default_factory=list)
    by_position: list[Row] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """Frames matched."""
        return sum(len(g) for g in self.groups)


def _separation_arcmin(ra: np.ndarray, dec: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Smallest separation (arcmin) of each (ra, dec) from the reference positions (deg)."""
    if len(refs) == 0 or len(ra) == 0:
        return np.full(len(ra), np.inf)
    sep = angular_separation(
        np.radians(ra)[:, None], np.radians(dec)[:, None], np.radians(refs[:, 0])[None, :], np.radians(refs[:, 1])[None, :]
    )
    return np.degrees(np.min(sep, axis=1)) * 60.0


def select_exposures(session: Session, selection: Selection, *, config: GatherConfig | None = None) -> ExposureSelection:
    """Select frames by name and position, and group them into exposures.

    Parameters
    ----------
    session : Session
    selection : Selection
    config : GatherConfig, optional
        Gives the default position radius (arcmin).

    Returns
    -------
    ExposureSelection
        Exposures ordered by DATE-OBS; within each, the frame to keep first.

    Notes
    -----
    Position matching: the reference positions are ``selection.ra_deg/dec_deg`` if given, else
    the RA/Dec of every frame (of the selected kind) whose name matched. A frame of another
    name whose RA/Dec lies within the radius of a reference (great-circle distance) is
    selected too. The declination band is cut in SQL; the distance is computed in Python, so
    both backends give the same answer.
    """
    config = config or load_gather_config()
    radius = config.position_radius_arcmin if selection.radius_arcmin is None else selection.radius_arcmin
    rows: dict[int, Row] = {}
    if selection.target:
        for row in session.execute(frame_query(selection.frame_filter(), *EXPOSURE_COLUMNS)):
            rows[row.id] = row
    elif selection.ra_deg is None:
        for row in session.execute(frame_query(selection.frame_filter(with_target=False), *EXPOSURE_COLUMNS)):
            rows[row.id] = row
    by_position: list[Row] = []
    if radius > 0 and (selection.target or selection.ra_deg is not None):  # else: nothing to match near
        if selection.ra_deg is not None:
            refs = np.array([[selection.ra_deg, selection.dec_deg]])
        else:
            refs = np.array(sorted({(round(r.ra_deg, 3), round(r.dec_deg, 3)) for r in rows.values()
                                    if r.ra_deg is not None and r.dec_deg is not None}))
        if len(refs):
            band = radius / 60.0
            query = frame_query(selection.frame_filter(with_target=False), *EXPOSURE_COLUMNS).where(
                Frame.ra_deg.is_not(None), Frame.dec_deg.is_not(None),
                Frame.dec_deg >= float(refs[:, 1].min()) - band, Frame.dec_deg <= float(refs[:, 1].max()) + band,
            )
            candidates = [r for r in session.execute(query) if r.id not in rows]
            if candidates:
                sep = _separation_arcmin(
                    np.array([r.ra_deg for r in candidates], float), np.array([r.dec_deg for r in candidates], float), refs
                )
                for row, distance in zip(candidates, sep):
                    if distance <= radius:
                        rows[row.id] = row
                        by_position.append(row)
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows.values():
        key = (row.instrument_id, row.date_obs) if row.instrument_id is not None and row.date_obs is not None else ("frame", row.id)
        groups[key].append(row)
    ordered = []
    for members in groups.values():
        # raw: the original exposure first; derived (re-reduced after a better master): the newest
        members.sort(key=lambda r: (r.duplicate_of_id is not None, -r.id if r.image_type in DERIVED_TYPES else r.id))
        ordered.append(members)
    ordered.sort(key=lambda g: (g[0].date_obs is None, g[0].date_obs or dt.datetime.min, g[0].id))
    return ExposureSelection(groups=ordered, by_position=by_position)



def frame_rows(session: Session, frame_ids: Iterable[int]) -> list[Row]:
    """The rows (:data:`EXPOSURE_COLUMNS`) of the frames ``frame_ids``, by id."""
    return [row for ids in chunked(sorted(set(frame_ids))) for row in session.execute(
        frame_query(None, *EXPOSURE_COLUMNS).where(Frame.id.in_(ids)).order_by(Frame.id)
    )]


def duplicate_reason(kept: Row, other: Row) -> str:
    """Why ``other``, a frame of the same exposure (instrument and DATE-OBS) as ``kept``, is skipped.

    Frames of one exposure differ in bytes (the same bytes are one frame), so the reason says
    which of them was kept and why.
    """
    if other.image_type in DERIVED_TYPES:  # re-reductions of one exposure: the newest readable is kept
        if other.id < kept.id:
            return f"same exposure: an older {other.image_type} product (the newest readable one is kept)"
        return f"same exposure: a newer {other.image_type} product without a readable file (an older one is kept)"
    if other.duplicate_of_id is not None:
        return "same exposure (instrument and DATE-OBS) as a kept frame, other bytes (a compressed, edited or re-written copy)"
    if kept.duplicate_of_id is not None:
        return "same exposure: the original has no readable file, a copy with other bytes was kept instead"
    return "same exposure (instrument and DATE-OBS) as a kept frame, other bytes"
