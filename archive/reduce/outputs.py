"""Where products go, and what is already there: output paths from the layouts, the
fingerprint a product file carries, and submitting a product's pixel work unless its file is
already in place (an interrupted run got past the rename)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from astropy.io import fits
from sqlalchemy import select
from sqlalchemy.orm import Session

from archive.db.bulk import chunked
from archive.db.models import (
    Frame,
)
from archive.files import render_path, safe_component
from archive import keywords as kw
from archive.reduce.config import ReductionConfig


log = logging.getLogger(__name__)


#: Hex digits of the fingerprint in product names (``{fp}``) and of a stack's ``{group}``.
FP_DIGITS, GROUP_DIGITS = 12, 10


def frames_by_id(session: Session, ids: Iterable[int]) -> list[Frame]:
    """The frames ``ids`` (in IN lists of bounded size), by DATE-OBS then id (unknown dates last)."""
    frames = [f for batch in chunked(set(ids)) for f in session.scalars(select(Frame).where(Frame.id.in_(batch)))]
    return sorted(frames, key=lambda f: (f.date_obs_s is None, f.date_obs_s or 0, f.id))


def output_path(config: ReductionConfig, kind: str, frame: Frame, instruments: dict[int, str], fp: str,
            **values: Any) -> Path:
    """The output path of a product: the layout template (checked by
    :func:`archive.reduce.config.check_layout`) filled with :func:`archive.files.safe_component`
    values of ``frame`` (the light, or the first input of a stack) and ``values``; the path
    is checked to stay below the output root (:func:`archive.files.render_path`)."""
    exposure = frame.exposure_time_s
    fields = {
        "night": frame.night, "target": frame.target, "filter": frame.filter_name,
        "instrument": instruments.get(frame.instrument_id), "fp": fp[:FP_DIGITS],
        "exposure": f"{exposure:g}" if exposure is not None else None, **values,
    }
    return render_path(config.products_root(), config.layout[kind], **{k: safe_component(v) for k, v in fields.items()})


def file_fingerprint(path: Path) -> str | None:
    """The fingerprint written in a product's header, if the file exists and is readable."""
    try:
        return fits.getval(path, kw.FINGERPRINT)
    except (OSError, KeyError):
        return None


def existing_output(output: Path, fp: str) -> bool:
    """True when ``output`` already holds this request's product (an interrupted run got past
    the rename): ingest it, do not compute it again.

    Raises
    ------
    FileExistsError
        Another file is at ``output`` (a product of other inputs or parameters, or a foreign
        file): it is never overwritten.
    """
    found = file_fingerprint(output)
    if found == fp:
        return True
    if output.exists():
        raise FileExistsError(f"{output} already holds another product (fingerprint {found or 'none'}, this one "
                              f"{fp[:FP_DIGITS]}): not overwritten")
    return False


def submit_product(executor: Executor, output: Path, fp: str, found: dict, task, job) -> Future:
    """The future of making ``output``: ``task(job)`` in the executor; or done at once with
    ``found`` when ``output`` already holds this product (an interrupted run got past the
    rename); or failed with :class:`FileExistsError` when another file is there."""
    future: Future = Future()
    try:
        if not existing_output(output, fp):
            return executor.submit(task, job)
        future.set_result(found)
    except FileExistsError as exc:
        future.set_exception(exc)
    return future
