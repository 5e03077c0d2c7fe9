"""The catalogue schema (SQLAlchemy 2.0 typed ORM).

Identity follows ``shared/DESIGN.md``: a :class:`Frame` is one image, identified by the
SHA-256 of its bytes; a :class:`Copy` is one file on disk holding a frame (the same bytes at
two paths are two copies of one frame). An *exposure* is one instrument and one DATE-OBS;
frames of the same exposure with different bytes point to the first one through
``duplicate_of_id``. Times are UTC, stored naive.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive.config import InstrumentName
from archive.db.base import Base, FilePath

#: Normalized image types. Raw: bias, dark, flat, light, dark_flat, arc; masters and the
#: derived products of reduction. Kept as strings (not a database enum) so that new types
#: need no migration.
RAW_TYPES = ("bias", "dark", "flat", "light", "dark_flat", "arc")
MASTER_TYPES = ("master_bias", "master_dark", "master_flat", "master_dark_model", "master_badpix")
DERIVED_TYPES = MASTER_TYPES + ("calibrated", "registered", "stacked")
IMAGE_TYPES = RAW_TYPES + DERIVED_TYPES


class Instrument(Base):
    """One unit of a camera: its model (INSTRUME or the dialect's equivalent) and, where the
    capture program writes one, its serial (the dialect's ``serial`` keywords: TELESCOP of a
    Seestar, a camera serial keyword). Two units of one model are two instruments: they never
    share masters (the matching rules' ``instrument`` is this row), while stacks may combine
    units of one model (:func:`archive.db.frames.instrument_model`).
    """

    __tablename__ = "instruments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The display name and identity: ``model`` alone, or ``"model serial"``.
    name: Mapped[str] = mapped_column(String(200), unique=True)
    #: The camera model (INSTRUME); configuration per instrument is looked up by ``name``,
    #: then by ``model``. Filled at ingest (rows of earlier catalogues: the name).
    model: Mapped[str | None] = mapped_column(String(200), index=True)
    #: The unit's serial, NULL when the header has none.
    serial: Mapped[str | None] = mapped_column(String(100))

    @property
    def key(self) -> InstrumentName:
        """The name as an :class:`archive.config.InstrumentName` (it carries the model)."""
        return InstrumentName(self.name, self.model)


class Night(Base):
    """A local observing night (see :func:`archive.ingest.timing.observing_night`)."""

    __tablename__ = "nights"

    night: Mapped[dt.date] = mapped_column(Date, primary_key=True)


class IngestRun(Base):
    """One call of :func:`archive.ingest.ingest_paths`: what it was asked and what it did."""

    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    host: Mapped[str] = mapped_column(String(200))
    software_version: Mapped[str] = mapped_column(String(50))
    roots: Mapped[list[str]] = mapped_column(JSON)
    n_new: Mapped[int] = mapped_column(Integer, default=0)
    n_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    n_new_copies: Mapped[int] = mapped_column(Integer, default=0)
    n_changed: Mapped[int] = mapped_column(Integer, default=0)
    n_problems: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)


class Frame(Base):
    """One image: a raw exposure or a derived product, with normalized columns and its header.

    Every normalized column is NULL when no keyword or rule gave a value; ``sources`` says,
    per column, which keyword or rule produced the value.
    """

    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    image_type: Mapped[str | None] = mapped_column(String(20), index=True)
    exposure_time_s: Mapped[float | None] = mapped_column(Float, index=True)
    filter_name: Mapped[str | None] = mapped_column(String(100), index=True)
    binning_x: Mapped[int | None] = mapped_column(Integer)
    binning_y: Mapped[int | None] = mapped_column(Integer)
    ccd_temp_c: Mapped[float | None] = mapped_column(Float)
    set_temp_c: Mapped[float | None] = mapped_column(Float)
    gain: Mapped[float | None] = mapped_column(Float)
    offset: Mapped[float | None] = mapped_column(Float)
    readout_mode: Mapped[str | None] = mapped_column(String(100))
    #: The colour filter array of a one-shot colour camera at the first pixel stored (numpy's
    #: ``data[0, 0]``): RGGB, BGGR, GRBG or GBRG, offsets applied; NULL for a monochrome frame
    #: (and for a demosaiced product).
    bayer_pattern: Mapped[str | None] = mapped_column(String(4))
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.id"), index=True)
    telescope: Mapped[str | None] = mapped_column(String(200))
    target: Mapped[str | None] = mapped_column(String(200))
    #: ``target`` folded for loose matching: lower case, letters and digits only ("M 31" -> "m31").
    target_key: Mapped[str | None] = mapped_column(String(200), index=True)
    ra_deg: Mapped[float | None] = mapped_column(Float)
    dec_deg: Mapped[float | None] = mapped_column(Float)
    date_obs: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: ``date_obs`` as integer seconds since 1970-01-01 UTC, for portable nearest-in-time ordering.
    date_obs_s: Mapped[int | None] = mapped_column(BigInteger, index=True)
    night: Mapped[dt.date | None] = mapped_column(ForeignKey("nights.night"), index=True)
    naxis1: Mapped[int | None] = mapped_column(Integer)
    naxis2: Mapped[int | None] = mapped_column(Integer)
    naxis3: Mapped[int | None] = mapped_column(Integer)
    bitpix: Mapped[int | None] = mapped_column(Integer)
    #: Index of the HDU holding the image (0 for simple files, >0 in multi-extension files).
    hdu_index: Mapped[int] = mapped_column(Integer, default=0)
    #: The image HDU's header as 80-character cards joined by newlines (END and blank cards
    #: left out); ``primary_header`` likewise when the image lives in an extension.
    header: Mapped[str] = mapped_column(Text)
    primary_header: Mapped[str | None] = mapped_column(Text)
    #: Normalized column -> the keyword or rule that produced its value; also ``dialect``.
    sources: Mapped[dict[str, Any]] = mapped_column(JSON)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"), index=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"))
    #: The reduction that produced a derived frame (NULL for raw frames and external masters).
    reduction_id: Mapped[int | None] = mapped_column(ForeignKey("reductions.id"), index=True)
    #: A product remade since (same lineage, ``Reduction.lineage``): the frame that replaced
    #: it. NULL for raw frames and for the current product of its lineage.
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"), index=True)

    instrument: Mapped[Instrument | None] = relationship()
    copies: Mapped[list[Copy]] = relationship(back_populates="frame", order_by="Copy.id")

    __table_args__ = (
        Index("ix_frames_exposure", "instrument_id", "date_obs"),
        Index("ix_frames_type_night", "image_type", "night"),
        # the products (frames made by a reduction) by reduction: SQLite's statistics count
        # the raw frames' NULLs in ix_frames_reduction_id, so its planner never seeks there
        # (the products of a night's reductions, migration 0016_products)
        Index("ix_frames_products", "reduction_id", sqlite_where=text("reduction_id IS NOT NULL"),
              postgresql_where=text("reduction_id IS NOT NULL")),
    )


class Copy(Base):
    """One file on disk holding a frame.

    A path has at most one *current* copy: when the file at a known path changes, the old row
    is kept with ``is_current`` false (history) and a new row is added. Among the current copies
    of a frame exactly one is canonical (the first one ingested, unless moved).
    """

    __tablename__ = "copies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    path: Mapped[str] = mapped_column(FilePath(4096), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    #: File modification time in integer nanoseconds (``os.stat().st_mtime_ns``).
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    is_canonical: Mapped[bool] = mapped_column(Boolean, default=False)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"))
    #: When ``archive prune`` deleted this copy's file (UTC; the row is kept, not current). A
    #: product with a pruned copy and no current one is remade on demand (migration 0011_prune).
    pruned_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    frame: Mapped[Frame] = relationship(back_populates="copies")

    __table_args__ = (
        Index(
            "uq_copies_current_path",
            "path",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )


class IngestProblem(Base):
    """A file that could not be ingested (severity ``error``) or was ingested with a gap
    the user should know of (``warning``: no image type, no DATE-OBS, ...)."""

    __tablename__ = "ingest_problems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"), index=True)
    path: Mapped[str] = mapped_column(FilePath(4096), index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    severity: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    #: Set when a later ingest of the same path succeeded.
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)


# -- reductions and provenance; the master calibration library (issue 3, migration 0002) -------

#: Steps a reduction records; roles an input frame plays in one.
REDUCTION_STEPS = ("master_bias", "master_dark", "master_flat", "master_dark_model", "master_badpix", "calibrate",
                   "register", "stack", "solve")
INPUT_ROLES = ("raw", "light", "master_bias", "master_dark", "master_flat", "master_badpix", "reference", "input")
#: The kinds of master built from raw calibration frames.
CALIBRATION_KINDS = ("bias", "dark", "flat")
#: ``Master.kind`` of a per-pixel dark-current model fitted over a dark ladder
#: (:mod:`archive.calib.ladder`); it serves as the ``dark`` of the lights it calibrates.
DARK_MODEL = "dark_model"
#: A bad-pixel mask (issue 10): a master of the library built from master darks and flats (or
#: a sequence's lights), selected for a light by the rules' ``[badpix]`` (never required).
BADPIX = "badpix"
#: Every kind of master a light is given: the calibrations, then the bad-pixel mask.
LIBRARY_KINDS = CALIBRATION_KINDS + (BADPIX,)
#: Every ``Master.kind`` of the library (a dark ladder's model serves as a dark).
MASTER_KINDS = LIBRARY_KINDS + (DARK_MODEL,)
#: ``Reduction.failure_kind`` of a ``failed`` row. ``alignment``: the frame does not align onto
#: its reference (too few stars, no transform); deterministic, so not tried again with the same
#: inputs. ``error``: the step raised or its product could not be written or catalogued (an
#: unreadable file, a full disk, a network file system's hiccup); tried again by the next run.
#: ``interrupted``: the run was stopped (Ctrl-C) while making it; tried again by the next run.
FAILURE_KINDS = ("alignment", "error", "interrupted")


class Reduction(Base):
    """One run of a reduction step: what it was asked, with which software, on which host, and
    what came of it.

    ``fingerprint`` is the SHA-256 of the step, its inputs with their roles, its parameters and
    the rule version, unique: one row per request, taken up again by a later run (a request
    whose fingerprint is ``done`` is a no-op). ``parameters`` are what was asked and are never
    changed with outcomes; what came out is kept apart: ``results``, ``failure_kind``,
    ``group_key``, and while it runs the claim (``claim_host``, ``claim_pid``, ``claimed_at``).
    """

    __tablename__ = "reductions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[str] = mapped_column(String(30), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    #: What was asked (what the fingerprint hashes, plus settings that do not change the
    #: product, such as a memory limit). Written when the row is claimed, never with outcomes.
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Package -> version (archive, astropy, ccdproc, numpy, ...).
    software: Mapped[dict[str, Any]] = mapped_column(JSON)
    host: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: running | done | failed
    status: Mapped[str] = mapped_column(String(10))
    #: Why it failed (people's words); NULL when it did not.
    message: Mapped[str | None] = mapped_column(Text)
    rule_version: Mapped[str | None] = mapped_column(String(50))
    #: Who works on a ``running`` row: host name and process id, and since when (UTC). NULL
    #: once the row is finished, and on rows interrupted before claims were kept.
    claim_host: Mapped[str | None] = mapped_column(String(200))
    claim_pid: Mapped[int | None] = mapped_column(Integer)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: The kind of a failure or rejection (:data:`FAILURE_KINDS`); NULL when ``status`` is
    #: ``done`` or ``running``. ``status = 'rejected'`` is a frame judged unusable (it cannot be
    #: aligned: ``alignment``), exit status 0; ``failed`` a step that broke, exit status 1.
    failure_kind: Mapped[str | None] = mapped_column(String(20))
    #: Registrations: the registration group (hash of its calibrated frames) the frame was
    #: registered in, or adopted into when the group's membership changed; NULL for other steps.
    group_key: Mapped[str | None] = mapped_column(String(64), index=True)
    #: What the product is a version of (``calibrate:<light id>``, ``register:<light id>``,
    #: ``stack:<hash of the stack group>``): of the done reductions of one lineage, the one
    #: made or chosen last is current, the outputs of the others are superseded
    #: (``Frame.superseded_by_id``). NULL for steps without one (masters, solve).
    lineage: Mapped[str | None] = mapped_column(String(80), index=True)
    #: What came out (a registration's star counts and shift ``dx``/``dy`` px, rotation, scale).
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    inputs: Mapped[list[ReductionInput]] = relationship(back_populates="reduction")


class ReductionInput(Base):
    """A frame used by a reduction, in a role (raw, light, master_bias, reference, ...)."""

    __tablename__ = "reduction_inputs"

    reduction_id: Mapped[int] = mapped_column(ForeignKey("reductions.id"), primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(20), primary_key=True)

    reduction: Mapped[Reduction] = relationship(back_populates="inputs")


class Master(Base):
    """A frame of the master calibration library, built here or made elsewhere.

    Masters built by ``archive masters build`` get their row when built; masters made by other
    software (PixInsight, Siril: ``IMAGETYP = 'Master Dark'``, normalized to ``master_*`` at
    ingest) get theirs the first time the library is consulted (``origin = 'external'``).
    A master flagged ``is_bad`` or outside ``[valid_from, valid_until)`` is never selected.
    """

    __tablename__ = "masters"

    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True)
    #: bias | dark | flat | badpix | dark_model (a dark ladder's fitted model)
    kind: Mapped[str] = mapped_column(String(10), index=True)
    #: built | external
    origin: Mapped[str] = mapped_column(String(10))
    n_combined: Mapped[int | None] = mapped_column(Integer)
    combine_method: Mapped[str | None] = mapped_column(String(30))
    #: Darks: the master bias was subtracted, so the dark scales with exposure time.
    bias_subtracted: Mapped[bool] = mapped_column(Boolean, default=False)
    is_bad: Mapped[bool] = mapped_column(Boolean, default=False)
    bad_reason: Mapped[str | None] = mapped_column(Text)
    valid_from: Mapped[dt.datetime | None] = mapped_column(DateTime)
    valid_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    rule_version: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    frame: Mapped[Frame] = relationship()


class CalibrationSelection(Base):
    """A decision: which master calibrates a frame, by which method, under which rules.

    ``candidates`` lists every candidate considered, each with its rank or the rule that
    rejected it, so "why this master" and "what would change" are queries later.
    """

    __tablename__ = "calibration_selections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    master_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"), index=True)
    #: exact | scaled | interpolated | model | none
    method: Mapped[str] = mapped_column(String(20))
    scale: Mapped[float | None] = mapped_column(Float)
    rule_version: Mapped[str] = mapped_column(String(50))
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: Method details: the masters and coefficients of an interpolated dark, ...
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reduction_id: Mapped[int | None] = mapped_column(ForeignKey("reductions.id"), index=True)


# -- where on the sky: footprints and their HEALPix index (issue 14, migration 0005) -----------


class Footprint(Base):
    """Where a frame looks: its corners on the sky, from a WCS or estimated.

    ``source`` says where it came from: ``header`` (the frame's own WCS), ``solved`` (a plate
    solution, made by the reduction ``reduction_id``; the WCS is kept in ``wcs_header``, the
    raw file is never modified) or ``estimated`` (pointing RA/Dec, focal length and pixel size,
    north up: the rotation is unknown). See :mod:`archive.db.sky`.
    """

    __tablename__ = "footprints"

    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True)
    #: header | solved | estimated
    source: Mapped[str] = mapped_column(String(10), index=True)
    #: Centre (normalized mean of the corners), deg.
    ra_deg: Mapped[float] = mapped_column(Float)
    dec_deg: Mapped[float] = mapped_column(Float)
    #: Largest distance from the centre to a corner, deg.
    radius_deg: Mapped[float] = mapped_column(Float)
    pixel_scale_arcsec: Mapped[float | None] = mapped_column(Float)
    #: HEALPix order of the frame's ``footprint_cells`` (NESTED numbering).
    healpix_order: Mapped[int] = mapped_column(Integer)
    #: The celestial WCS as FITS header cards (header and solved footprints).
    wcs_header: Mapped[str | None] = mapped_column(Text)
    reduction_id: Mapped[int | None] = mapped_column(ForeignKey("reductions.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class FootprintCorner(Base):
    """A corner of a footprint, with the unit vectors of the exact position tests.

    ``x, y, z``: the corner; ``n*``: the unit normal of the edge from this corner to the next
    (corners counter-clockwise); ``u* = n x c`` and ``w* = c_next x n`` bound the edge (see
    :mod:`archive.db.sky`).
    """

    __tablename__ = "footprint_corners"

    frame_id: Mapped[int] = mapped_column(ForeignKey("footprints.frame_id"), primary_key=True)
    corner: Mapped[int] = mapped_column(Integer, primary_key=True)
    ra_deg: Mapped[float] = mapped_column(Float)
    dec_deg: Mapped[float] = mapped_column(Float)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    z: Mapped[float] = mapped_column(Float)
    nx: Mapped[float] = mapped_column(Float)
    ny: Mapped[float] = mapped_column(Float)
    nz: Mapped[float] = mapped_column(Float)
    ux: Mapped[float] = mapped_column(Float)
    uy: Mapped[float] = mapped_column(Float)
    uz: Mapped[float] = mapped_column(Float)
    wx: Mapped[float] = mapped_column(Float)
    wy: Mapped[float] = mapped_column(Float)
    wz: Mapped[float] = mapped_column(Float)


class FootprintCell(Base):
    """A HEALPix cell a footprint overlaps (the spatial index; primary key cell first)."""

    __tablename__ = "footprint_cells"

    cell: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    frame_id: Mapped[int] = mapped_column(ForeignKey("footprints.frame_id"), primary_key=True, index=True)


# -- frame quality: measurements, flags, overrides (issue 11, migration 0006) -----------------------


class FrameMeasurement(Base):
    """Quality figures of one frame under one measurement version (:mod:`archive.reduce.measure`).

    Lights are measured on their current calibrated frame when there is one
    (``source_frame_id``), else on the raw frame. Columns a kind of frame has no use for stay
    NULL (a bias has no FWHM); a value needing an unknown gain or plate scale is NULL too.
    ``judged_version`` is the version of the quality rules last applied to the frame.
    """

    __tablename__ = "frame_measurements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    version: Mapped[str] = mapped_column(String(30))
    #: The frame whose pixels were measured (the calibrated frame of a light, else the frame).
    source_frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"))
    #: The frame's image type when measured (light, bias, master_dark, ...).
    kind: Mapped[str] = mapped_column(String(20))
    #: ok | failed
    status: Mapped[str] = mapped_column(String(10))
    message: Mapped[str | None] = mapped_column(Text)
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime)
    #: Sigma-clipped median and standard deviation of the pixels (ADU; e- with a known gain).
    background_adu: Mapped[float | None] = mapped_column(Float)
    noise_adu: Mapped[float | None] = mapped_column(Float)
    background_e: Mapped[float | None] = mapped_column(Float)
    noise_e: Mapped[float | None] = mapped_column(Float)
    gain_e_per_adu: Mapped[float | None] = mapped_column(Float)
    n_stars: Mapped[int | None] = mapped_column(Integer)
    fwhm_px: Mapped[float | None] = mapped_column(Float)
    fwhm_arcsec: Mapped[float | None] = mapped_column(Float)
    plate_scale_arcsec: Mapped[float | None] = mapped_column(Float)
    eccentricity: Mapped[float | None] = mapped_column(Float)
    saturated_fraction: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[float | None] = mapped_column(Float)
    #: Calibrations: level (bias, flat), read noise (bias), dark current, hot pixels, flat SNR
    #: and corner-to-centre falloff.
    read_noise_adu: Mapped[float | None] = mapped_column(Float)
    read_noise_e: Mapped[float | None] = mapped_column(Float)
    dark_current_adu_s: Mapped[float | None] = mapped_column(Float)
    dark_current_e_s: Mapped[float | None] = mapped_column(Float)
    hot_pixels: Mapped[int | None] = mapped_column(Integer)
    flat_snr: Mapped[float | None] = mapped_column(Float)
    flat_falloff: Mapped[float | None] = mapped_column(Float)
    #: Masters: the previous master of the same kind and instrument, and the fraction of
    #: pixels differing from it by more than N sigma.
    previous_master_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"))
    changed_fraction: Mapped[float | None] = mapped_column(Float)
    #: The detection list of a light: [[x, y, flux, fwhm_px, a, b], ...] brightest first.
    stars: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Parameters of the measurement (detection threshold, ...).
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    judged_version: Mapped[str | None] = mapped_column(String(50))

    __table_args__ = (
        Index("uq_frame_measurements_frame_version", "frame_id", "version", unique=True),
    )


class QualityFlag(Base):
    """One violated quality rule of one frame: the value, the limit and the rule."""

    __tablename__ = "quality_flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    measurement_id: Mapped[int] = mapped_column(ForeignKey("frame_measurements.id"), index=True)
    rule: Mapped[str] = mapped_column(String(100))
    rule_version: Mapped[str] = mapped_column(String(50))
    metric: Mapped[str] = mapped_column(String(50))
    value: Mapped[float | None] = mapped_column(Float)
    #: The limit the value broke, and how: min or max.
    limit_value: Mapped[float] = mapped_column(Float)
    bound: Mapped[str] = mapped_column(String(5))
    #: absolute | group (relative to the group's median and MAD)
    scope: Mapped[str] = mapped_column(String(10))
    #: reject | warn
    action: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class QualityOverride(Base):
    """A person's verdict on a frame (accept or reject), which wins over the rules; the latest
    row of a frame is the one in force."""

    __tablename__ = "quality_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    #: accept | reject
    verdict: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    by_user: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
