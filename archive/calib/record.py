"""Recording a master: the one way a built master (bias, dark, flat, dark model, bad-pixel
mask) becomes a library file and a catalogued product with its provenance.

The reduction row is claimed inside a write transaction, the file written to a temporary name
and renamed (:func:`archive.fitsio.write_atomic`), catalogued through the one product protocol
(:func:`archive.ingest.products.record_product`) and linked to its library row
(:class:`archive.db.models.Master`) and to the selections of the masters it was made with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from archive.calib.combine import MasterBuildError
from archive.calib.library import LIBRARY_LAYOUT
from archive.calib.select import record_selection
from archive.calib.selection import Selection
from archive.db.base import utcnow
from archive.db.models import Master, Reduction
from archive.db.provenance import clear_selections, start_reduction
from archive.db.prune import pruned_condition
from archive.db.session import session_scope
from archive.errors import ArchiveError
from archive.files import render_path, safe_component
from archive.fitsio import write_atomic
from archive.ingest.products import ProductRun, fail_product, record_product

log = logging.getLogger(__name__)


def is_done(session: Session, fp: str) -> bool:
    """Whether a reduction of fingerprint ``fp`` has finished (and its master was not pruned:
    a pruned master is built again, :func:`archive.db.prune.pruned_condition`)."""
    return session.scalar(select(Reduction.id).where(Reduction.fingerprint == fp, Reduction.status == "done",
                                                     ~pruned_condition()).limit(1)) is not None


def library_target(library: Path, instrument: str | None, kind: str, setup: str, fp: str) -> Path:
    """A master's file in the library: ``library/<instrument>/<kind>/master_<kind>_<setup>_<fp>.fits``
    (:data:`archive.calib.library.LIBRARY_LAYOUT`; every part made safe for a file name).

    Parameters
    ----------
    library : Path
    instrument : str or None
        The instrument's name (``unknown-instrument`` when None).
    kind : str
        The library kind (bias, dark, flat, dark_model, badpix).
    setup : str
        What tells the master apart (night, binning, exposure, filter, temperature), joined by ``_``.
    fp : str
        The master's fingerprint: its first 10 characters end the name.
    """
    return render_path(library, LIBRARY_LAYOUT, instrument=safe_component(instrument, "unknown-instrument"),
                       kind=kind, name=f"{safe_component(f'master_{kind}_{setup}')}_{fp[:10]}.fits")


def record_master(
    engine: Engine, kind: str, fp: str, parameters: dict[str, Any], inputs: list[tuple[int, str]],
    target: Path, data: np.ndarray, header: fits.Header, products: ProductRun, summary: Any, *,
    what: str, rule_version: str | None, n_combined: int, combine_method: str,
    selections: Sequence[Selection] = (), bias_subtracted: bool = False,
    extensions: Sequence[tuple[str, np.ndarray]] = (), dtype: Any = np.float32,
) -> None:
    """Write a master and catalogue it with its provenance.

    The reduction row (step ``master_<kind>``, fingerprint ``fp``) is claimed inside a write
    transaction (another run may have built or started the same master meanwhile: then it is
    counted ``unchanged`` or ``busy``), the file written (:func:`archive.fitsio.write_atomic`,
    with ``extensions``, as ``dtype``), ingested and linked to its library row and to the
    ``selections`` of the masters used. A failure leaves a failed reduction row, taken up again
    by the next run.

    Parameters
    ----------
    engine : Engine
    kind : str
        The library kind (``Master.kind``).
    fp : str
        The fingerprint.
    parameters : dict
        Stored with the reduction.
    inputs : list of (frame id, role)
    target : Path
        The master's file in the library (:func:`library_target`).
    data : ndarray
        The primary image.
    header : Header
    products : ProductRun
    summary : BuildSummary
        ``built``, ``unchanged`` or ``busy`` is added to.
    what : str
        The master described, for the log.
    rule_version : str or None
        The matching rules' version, on the library row.
    n_combined : int
        Frames the master is made from.
    combine_method : str
        How (``median``, ``sigma_clip``, ``badpix:darks`` ...).
    selections : sequence of Selection
        The decisions of the masters used (master bias, master dark).
    bias_subtracted : bool
        The library row's ``bias_subtracted``.
    extensions : sequence of (str, ndarray)
        Named image extensions after the primary HDU.
    dtype : numpy dtype
        Of the primary image on disk (float32; a mask uint8).

    Raises
    ------
    MasterBuildError
        The file cannot be written or catalogued.
    """
    with session_scope(engine, write=True) as session:
        # look again inside the write transaction (the row is claimed if absent or free): another
        # run may have built or started this master while the pixels were being combined here
        reduction = start_reduction(session, f"master_{kind}", fp, parameters, rule_version, inputs)
        reduction_id = reduction.id if reduction is not None else None
        done = reduction is None and is_done(session, fp)
    if reduction_id is None:
        if done:
            summary.unchanged += 1
        else:
            summary.busy += 1
            log.info("master %s %s is being built by another run", kind, what)
        return
    try:
        write_atomic(target, data, header, extensions, dtype=dtype)

        def link(session: Session, frame_id: int) -> None:
            master = session.get(Master, frame_id) or Master(frame_id=frame_id, kind=kind, created_at=utcnow())
            master.kind, master.origin = kind, "built"
            master.n_combined, master.combine_method = n_combined, combine_method
            master.bias_subtracted = bias_subtracted
            master.rule_version = rule_version
            master.is_bad = bool(master.is_bad)
            session.add(master)
            clear_selections(session, reduction_id)  # a redone build replaces what its first attempt left
            for sel in selections:
                record_selection(session, sel, reduction_id=reduction_id)

        frame_id = record_product(products, reduction_id, target, link=link)
        summary.built.append((kind, frame_id, str(target)))
        log.info("built %s %s -> %s", kind, what, target)
    except BaseException as exc:
        # a master that failed (or a run interrupted with Ctrl-C) leaves a failed row, taken up
        # again by the next run
        fail_product(engine, reduction_id, str(exc) or type(exc).__name__,
                     failure="error" if isinstance(exc, Exception) else "interrupted")
        if isinstance(exc, (ArchiveError, OSError)):
            raise MasterBuildError(str(exc)) from exc
        raise
