"""Everything the catalogue knows of one frame: its normalized values with their sources, its
whole header, its copies, the masters chosen for it and its provenance (``archive show``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from archive.db.frames import canonical_paths
from archive.db.models import CalibrationSelection, Frame, IngestProblem
from archive.db.provenance import ProvenanceError, frame_at_path, provenance_summary, provenance_tree, used_by
from archive.reports.catalog import stack_exposure_s

#: The normalized columns of a frame, in the order they are shown.
NORMALIZED = (
    "image_type", "target", "filter_name", "exposure_time_s", "date_obs", "night", "instrument", "telescope",
    "binning_x", "binning_y", "ccd_temp_c", "set_temp_c", "gain", "offset", "readout_mode", "bayer_pattern", "ra_deg",
    "dec_deg", "naxis1", "naxis2", "naxis3", "bitpix", "hdu_index",
)


@dataclass
class FrameRecord:
    """One frame, as :func:`frame_record` finds it.

    Attributes
    ----------
    frame_id : int
    sha256 : str
    values : list of (column, value, source)
        Each normalized column (:data:`NORMALIZED`) with its value (None: NULL) and the keyword
        or rule that gave it (``sources``; None when no keyword or rule did).
    other_sources : dict
        The sources of what is not a column (the dialect, the site longitude, ...).
    header : str
        The image HDU's header, cards joined by newlines (as stored).
    primary_header : str or None
        The primary header, when the image lives in an extension.
    copies : list of dict
        path, size (bytes), mtime (UTC), sha256, canonical, current, ingested_at, pruned_at (when
        ``archive prune`` deleted the file, else None); current first.
    selections : list of dict
        The recorded master choices for the frame (as a light) or for the reduction that made it
        (as a calibrated frame): kind, method, master_id, master_path, scale, rule_version,
        decided_at, reduction_id; newest first.
    duplicate_of : int or None
        The frame of the same exposure this one duplicates.
    duplicates : list of int
        Frames flagged as duplicates of this one.
    total_exposure_s : float or None
        A stack's total exposure (s), from its header.
    provenance : dict or None
        :func:`~archive.db.provenance.provenance_summary` of a product (None for a raw frame).
    used_by : int
        Products made from the frame, directly or not.
    problems : list of (severity, reason)
        Unresolved ingest problems recorded for its paths (warnings such as a missing EXPTIME).
    """

    frame_id: int
    sha256: str
    values: list[tuple[str, Any, str | None]]
    other_sources: dict[str, str]
    header: str
    primary_header: str | None
    copies: list[dict[str, Any]] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)
    duplicate_of: int | None = None
    duplicates: list[int] = field(default_factory=list)
    total_exposure_s: float | None = None
    provenance: dict[str, Any] | None = None
    used_by: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)


def find_frame(session: Session, ref: str | int | Path) -> Frame:
    """The frame ``ref`` names: a frame id (digits, when no such file exists) or a path of one
    of its current copies (see :func:`~archive.db.provenance.frame_at_path`).

    Raises
    ------
    ProvenanceError
        No such frame or catalogued path.
    """
    text = str(ref)
    if isinstance(ref, int) or (text.isdigit() and not Path(text).exists()):
        frame = session.get(Frame, int(text))
        if frame is None:
            raise ProvenanceError(f"no frame {text} in the catalogue")
        return frame
    return frame_at_path(session, text)


def frame_record(session: Session, ref: str | int | Path) -> FrameRecord:
    """Everything the catalogue knows of the frame ``ref`` (:func:`find_frame`).

    Raises
    ------
    ProvenanceError
        No such frame or catalogued path.
    """
    frame = find_frame(session, ref)
    sources = dict(frame.sources or {})
    values = []
    for column in NORMALIZED:
        value = frame.instrument.name if column == "instrument" and frame.instrument else getattr(frame, column, None)
        values.append((column, value, sources.pop(column, None)))
    copies = [
        {"path": c.path, "size": c.size, "mtime": dt.datetime.fromtimestamp(c.mtime_ns / 1e9, dt.timezone.utc)
         .replace(tzinfo=None), "sha256": c.sha256, "canonical": c.is_canonical, "current": c.is_current,
         "ingested_at": c.ingested_at, "pruned_at": c.pruned_at}
        for c in sorted(frame.copies, key=lambda c: (not c.is_current, not c.is_canonical, c.id))
    ]
    condition = CalibrationSelection.frame_id == frame.id
    if frame.reduction_id is not None:
        condition = or_(condition, CalibrationSelection.reduction_id == frame.reduction_id)
    rows = session.scalars(select(CalibrationSelection).where(condition)
                           .order_by(CalibrationSelection.decided_at.desc(), CalibrationSelection.id.desc())).all()
    paths = canonical_paths(session, [r.master_id for r in rows if r.master_id is not None])
    selections = [
        {"kind": r.kind, "method": r.method, "master_id": r.master_id, "master_path": paths.get(r.master_id),
         "scale": r.scale, "rule_version": r.rule_version, "decided_at": r.decided_at, "reduction_id": r.reduction_id}
        for r in rows
    ]
    duplicates = list(session.scalars(select(Frame.id).where(Frame.duplicate_of_id == frame.id).order_by(Frame.id)))
    record = FrameRecord(
        frame_id=frame.id, sha256=frame.sha256, values=values, header=frame.header,
        other_sources={key: str(source) for key, source in sorted(sources.items())},
        primary_header=frame.primary_header, copies=copies, selections=selections,
        duplicate_of=frame.duplicate_of_id, duplicates=duplicates,
        used_by=len(used_by(session, frame)),
    )
    if frame.image_type == "stacked":
        record.total_exposure_s = stack_exposure_s(frame.header, frame.exposure_time_s)
    if frame.reduction_id is not None:
        record.provenance = provenance_summary(provenance_tree(session, frame))
    problem_paths = [c["path"] for c in copies if c["current"]]
    if problem_paths:
        record.problems = [tuple(p) for p in session.execute(
            select(IngestProblem.severity, IngestProblem.reason)
            .where(IngestProblem.path.in_(problem_paths), ~IngestProblem.resolved).order_by(IngestProblem.id))]
    return record


#: Measurement columns shown for a frame, in order (the others are bookkeeping).
MEASURED = (
    "background_adu", "noise_adu", "background_e", "noise_e", "gain_e_per_adu", "n_stars", "fwhm_px", "fwhm_arcsec",
    "plate_scale_arcsec", "eccentricity", "saturated_fraction", "weight", "read_noise_adu", "read_noise_e",
    "dark_current_adu_s", "dark_current_e_s", "hot_pixels", "flat_snr", "flat_falloff", "changed_fraction",
)


def frame_quality(session: Session, frame_id: int) -> dict[str, Any]:
    """The quality of one frame: its measurements, the flags stored with them, the person's
    verdicts and the verdict in force (:func:`archive.reduce.quality.verdicts`).

    Returns
    -------
    dict
        ``verdict`` (verdicts()'s dict: verdict, by, reasons, flags), ``measurements`` (one
        dict per measurement version, newest first: version, status, message, measured_at,
        source_frame_id, judged_version and the non-empty :data:`MEASURED` figures),
        ``flags`` (stored flags: rule, rule_version, metric, value, limit, bound, scope,
        action) and ``overrides`` (verdict, reason, by_user, created_at; newest first).
    """
    from archive.db.models import FrameMeasurement, QualityFlag, QualityOverride
    from archive.reduce.quality import verdicts  # imported on use: numpy, pandas

    measurements = []
    for m in session.scalars(select(FrameMeasurement).where(FrameMeasurement.frame_id == frame_id)
                             .order_by(FrameMeasurement.measured_at.desc(), FrameMeasurement.id.desc())):
        figures = {c: getattr(m, c) for c in MEASURED if getattr(m, c) is not None}
        measurements.append({"version": m.version, "status": m.status, "message": m.message,
                             "measured_at": m.measured_at, "source_frame_id": m.source_frame_id,
                             "judged_version": m.judged_version, "figures": figures})
    flags = [{"rule": f.rule, "rule_version": f.rule_version, "metric": f.metric, "value": f.value,
              "limit": f.limit_value, "bound": f.bound, "scope": f.scope, "action": f.action}
             for f in session.scalars(select(QualityFlag).where(QualityFlag.frame_id == frame_id)
                                      .order_by(QualityFlag.id))]
    overrides = [{"verdict": o.verdict, "reason": o.reason, "by_user": o.by_user, "created_at": o.created_at}
                 for o in session.scalars(select(QualityOverride).where(QualityOverride.frame_id == frame_id)
                                          .order_by(QualityOverride.id.desc()))]
    return {"verdict": verdicts(session, [frame_id])[frame_id], "measurements": measurements, "flags": flags,
            "overrides": overrides}


def frame_links(session: Session, frame_id: int) -> dict[str, Any]:
    """Provenance of one frame, both ways: ``inputs`` (the tree down to raw frames,
    :func:`~archive.db.provenance.provenance_tree`; None for a raw frame) and ``products``
    (what was made from it, :func:`~archive.db.provenance.used_by`).

    Raises
    ------
    ProvenanceError
        No such frame.
    """
    frame = find_frame(session, int(frame_id))
    tree = provenance_tree(session, frame) if frame.reduction_id is not None else None
    return {"inputs": tree, "products": used_by(session, frame)}


def frame_file(session: Session, frame_id: int) -> tuple[str, int] | None:
    """The file to read the frame's pixels from: the path of a current copy that exists on
    disk (the canonical one first) and the HDU holding the image; None when the catalogue
    knows no such frame or none of its files is there. The path comes from the catalogue only.
    """
    frame = session.get(Frame, int(frame_id))
    if frame is None:
        return None
    for copy in sorted(frame.copies, key=lambda c: (not c.is_canonical, c.id)):
        if copy.is_current and Path(copy.path).is_file():
            return copy.path, frame.hdu_index
    return None
