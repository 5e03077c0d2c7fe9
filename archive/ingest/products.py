"""The one way a step records a product it made (``shared/DESIGN.md``, "Layers").

Every product (masters, calibrated, registered and stacked frames, and what later steps
add) goes through the same four moves:

1. its reduction is claimed (:func:`archive.db.provenance.start_reduction`: a ``running`` row
   with the inputs and their roles, committed before any pixel is computed);
2. the pixels are written to a temporary name and renamed (:func:`archive.fitsio.write_atomic`,
   usually in a worker process);
3. :func:`record_product` catalogues the file through ingest's core
   (:func:`archive.ingest.catalogue.catalogue_batch`, which returns its frame id: no look-up by
   path afterwards), lets the step add its own rows (master selections, library row), and
   marks the reduction done, all in one transaction;
4. or :func:`fail_product` marks it failed with the reason.

The products of one command share one ingest run (:class:`ProductRun`), opened when the
first one is recorded: a command that makes nothing adds no run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

import archive
from archive.config import Settings, load_settings
from archive.db.base import utcnow
from archive.db.models import IngestRun
from archive.db.provenance import finish_reduction
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.ingest.dialects import DialectSet
from archive.ingest.headers import ReadFailure, read_fits
from archive.ingest.catalogue import catalogue_batch
from archive.ingest.runs import run_host
from archive.ingest.sky_config import SkyConfig, load_sky_config


class ProductError(RuntimeError, ArchiveError):
    """A product file could not be catalogued (unreadable, or its header not understood)."""


class ProductRun:
    """The ingest run of every product one command makes.

    Parameters
    ----------
    engine : Engine
        The catalogue.
    root : str or Path
        Where the products go (recorded as the run's root).
    settings : Settings, optional
        The command's settings (default :func:`archive.config.load_settings`): the configured
        site longitude per instrument (``Settings.sites``), for the night, and ``[sky]``.
    dialects : DialectSet, optional
        Default: the bundled dialects.
    sky : SkyConfig, optional
        Which products get a footprint, when the caller has resolved it already (default
        ``load_sky_config(settings)``).

    Attributes
    ----------
    run_id : int or None
        The run's row, once a product has been recorded.
    recorded : int
        Products recorded.
    """

    def __init__(self, engine: Engine, root: str | Path, settings: Settings | None = None, *,
                 dialects: DialectSet | None = None, sky: SkyConfig | None = None):
        settings = settings or load_settings()
        self.engine = engine
        self.sky = sky or load_sky_config(settings)
        self.root = str(Path(root).absolute())
        self.sites = dict(settings.sites)
        self._dialects = dialects
        self.run_id: int | None = None
        self.recorded = 0

    @property
    def dialects(self) -> DialectSet:
        if self._dialects is None:
            self._dialects = DialectSet()
        return self._dialects

    def _open(self) -> int:
        if self.run_id is None:
            with session_scope(self.engine, write=True) as session:
                run = IngestRun(started_at=utcnow(), host=run_host(), software_version=archive.__version__,
                                roots=[self.root])
                session.add(run)
                session.flush()
                self.run_id = run.id
        return self.run_id

    def close(self) -> None:
        """Mark the run finished with the number of products recorded (nothing when none was)."""
        if self.run_id is None:
            return
        with session_scope(self.engine, write=True) as session:
            session.execute(update(IngestRun).where(IngestRun.id == self.run_id).values(
                finished_at=utcnow(), n_new=self.recorded))

    def __enter__(self) -> ProductRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_product(
    run: ProductRun,
    reduction_id: int,
    path: str | Path,
    *,
    link: Callable[[Session, int], None] | None = None,
    results: dict[str, Any] | None = None,
) -> int:
    """Catalogue the product at ``path``, link it to its reduction and mark that done.

    Parameters
    ----------
    run : ProductRun
        The command's product run.
    reduction_id : int
        The ``running`` reduction that made the file.
    path : str or Path
        The product, already written (renamed into place).
    link : callable, optional
        ``link(session, frame_id)``: the step's own rows (master selections, the library row),
        written in the same transaction.
    results : dict, optional
        What came out of the step (a registration's shift), kept with the reduction
        (``Reduction.results``, apart from its parameters).

    Returns
    -------
    int
        The product's frame id.

    Raises
    ------
    ProductError
        The file cannot be read back or its header not understood (nothing is written).
    """
    name = str(Path(path).absolute())
    read = read_fits(name, run.dialects, sites=run.sites)
    if isinstance(read, ReadFailure):
        raise ProductError(f"{name}: the product could not be catalogued: {read.reason}")
    run_id = run._open()
    with session_scope(run.engine, write=True) as session:
        frame_id = catalogue_batch(session, [read], run_id, sky=run.sky)[read.path]
        if link is not None:
            link(session, frame_id)
        finish_reduction(session, reduction_id, [frame_id], results=results or None)
    run.recorded += 1
    return frame_id


def fail_product(
    engine: Engine, reduction_id: int, message: str, *, failure: str = "error", results: dict[str, Any] | None = None,
) -> None:
    """Mark a reduction failed, with the reason and the kind of failure.

    Parameters
    ----------
    engine : Engine
    reduction_id : int
    message : str
        Why (cut to 2,000 characters).
    failure : str
        The kind of failure (:data:`archive.db.models.FAILURE_KINDS`): ``'alignment'`` when it
        is deterministic (not tried again with the same inputs), ``'interrupted'`` for a
        stopped run, else ``'error'`` (tried again next run).
    results : dict, optional
        What the step found before it failed (a registration's star counts).
    """
    with session_scope(engine, write=True) as session:
        finish_reduction(session, reduction_id, status="failed", message=message[:2000], failure_kind=failure,
                         results=results or None)


def reject_product(
    engine: Engine, reduction_id: int, reason: str, *, kind: str = "alignment", results: dict[str, Any] | None = None,
) -> None:
    """Mark a reduction rejected: the frame was judged unusable for this step (``kind``,
    :data:`archive.db.models.FAILURE_KINDS`), with the reason; not tried again with the same
    inputs, and not a failure of the run (``shared/DESIGN.md``, "Judgement")."""
    with session_scope(engine, write=True) as session:
        finish_reduction(session, reduction_id, status="rejected", message=reason[:2000], failure_kind=kind,
                         results=results or None)
