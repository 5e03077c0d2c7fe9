"""What each page shows, gathered from the library's functions as plain values (the templates
lay them out). No SQL here: the reports, the calibration library and provenance query."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archive.calib.library import library_table
from archive.db.frames import FrameFilter
from archive.reports.catalog import frame_rows, problem_rows, summary_rows
from archive.reports.frame import frame_file, frame_links, frame_quality, frame_record
from archive.reports.integration import light_integration
from archive.reports.queries import load_queries, run_query
from archive.reports.reductions import list_reduction_problems

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["frame", "frame_file", "load_queries", "masters", "night", "nights", "problems", "run_query", "target",
           "targets"]


def _table(frame) -> tuple[list[str], list[tuple]]:
    """A DataFrame as (columns, rows), missing values as None."""
    frame = frame.astype(object).where(frame.notna(), None)
    return list(frame.columns), [tuple(r) for r in frame.itertuples(index=False)]


def nights(session: Session, folder: Path | None = None) -> tuple[list[str], list[tuple]]:
    """The nights: the named report ``nights`` (queries/nights.sql)."""
    return _table(run_query(session, "nights", {}, folder))


def targets(session: Session, folder: Path | None = None) -> tuple[list[str], list[tuple]]:
    """Targets and filters: the named report ``integration_by_target_filter``."""
    return _table(run_query(session, "integration_by_target_filter", {}, folder))


def target(session: Session, name: str) -> dict[str, Any] | None:
    """A target's integration per filter, and per filter and night, accepted against total;
    None when no light has that target."""
    per_night = light_integration(session, target=name, by=("filter_name", "night"))
    if not per_night:
        return None
    return {"per_filter": light_integration(session, target=name, by=("filter_name",)), "per_night": per_night}


def night(session: Session, date: dt.date) -> dict[str, Any] | None:
    """One night: counts by type, filter and exposure, integration per target and filter
    (accepted against total) and its frames; None when the catalogue has no frame of it."""
    f = FrameFilter(night=date)
    columns, rows = frame_rows(session, f)
    if not rows:
        return None
    counts = summary_rows(session, ("image_type", "filter_name", "exposure_time_s"), f)
    products = summary_rows(session, ("image_type", "filter_name"), f, level="products")
    return {"counts": counts, "products": products,
            "integration": light_integration(session, night=date, by=("target", "filter_name")),
            "frame_columns": columns, "frames": rows}


def frame(session: Session, frame_id: int) -> dict[str, Any]:
    """Everything of one frame: :func:`~archive.reports.frame.frame_record`, its quality and
    its provenance both ways.

    Raises
    ------
    ProvenanceError
        No such frame.
    """
    record = frame_record(session, int(frame_id))
    header_keys = {card[:8].strip() for card in (record.header or "").split("\n")}
    links = frame_links(session, record.frame_id)
    if links["inputs"] is not None:
        links["inputs"] = _expand_once(links["inputs"], set())
    return {"record": record, "quality": frame_quality(session, record.frame_id), "links": links,
            "header_keys": header_keys, "has_file": frame_file(session, record.frame_id) is not None}


def _expand_once(node: dict[str, Any], seen: set[int]) -> dict[str, Any]:
    """A provenance tree in which a frame reached again (a master used by every light) is a
    link, not a second copy of its own tree (``again``: True)."""
    node = dict(node)
    if node["frame_id"] in seen and node.get("inputs"):
        node["inputs"], node["again"] = [], True
        return node
    seen.add(node["frame_id"])
    node["inputs"] = [_expand_once(child, seen) for child in node.get("inputs", [])]
    return node


def masters(session: Session) -> dict[str, Any]:
    """The master library, and per kind the validity of each master over time: bars from
    ``valid_from`` (else its DATE-OBS) to ``valid_until`` (else the next master of the same
    kind, instrument and filter, else today), as fractions of the whole span."""
    columns, rows = _table(library_table(session))
    items = [dict(zip(columns, r)) for r in rows]
    today = dt.datetime.combine(dt.date.today(), dt.time())
    starts = {}
    for item in items:
        starts[item["frame_id"]] = item["valid_from"] or item["date_obs"]
    bars: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        start = starts[item["frame_id"]]
        if start is None:
            continue
        end = item["valid_until"]
        if end is None:  # open: until the next master of the same kind, instrument and filter
            later = [starts[o["frame_id"]] for o in items if o["kind"] == item["kind"]
                     and o["instrument"] == item["instrument"] and o["filter_name"] == item["filter_name"]
                     and starts[o["frame_id"]] is not None and starts[o["frame_id"]] > start]
            end = min(later) if later else max(today, start + dt.timedelta(days=1))
        bars.setdefault(item["kind"], []).append({**item, "start": start, "end": end,
                                                  "open": item["valid_until"] is None})
    timelines = {}
    for kind, group in sorted(bars.items()):
        first = min(b["start"] for b in group)
        last = max(b["end"] for b in group)
        span = max((last - first).total_seconds(), 1.0)
        for b in group:
            b["x"] = 100.0 * (b["start"] - first).total_seconds() / span
            b["width"] = max(100.0 * (b["end"] - b["start"]).total_seconds() / span, 0.3)
        timelines[kind] = {"first": first, "last": last, "bars": group}
    return {"columns": columns, "rows": rows, "timelines": timelines}


def problems(session: Session, limit: int) -> dict[str, Any]:
    """Unresolved ingest problems, failed steps and rejected frames, the newest ``limit`` of each."""
    problem_columns, problem_list = problem_rows(session, limit=limit)
    failed = _table(list_reduction_problems(session, status="failed", limit=limit))
    rejected = _table(list_reduction_problems(session, status="rejected", limit=limit))
    return {"problem_columns": problem_columns, "problems": problem_list, "failed": failed, "rejected": rejected,
            "limit": limit}
