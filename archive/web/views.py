"""What each page shows, gathered from the library's functions as plain values (the templates
lay them out). No SQL here: the reports, the calibration library and provenance query."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from archive.calib.library import library_table
from archive.reduce.quality_report import rejected_frames
from archive.reports.catalog import problem_rows
from archive.reports.frame import frame_file, frame_links, frame_quality, frame_record
from archive.reports.integration import light_integration
from archive.reports.night import QUALITY_METRICS, NightReport, night_summary
from archive.reports.night_html import quality_plot_png
from archive.reports.queries import load_queries, run_query
from archive.reports.reductions import list_reduction_problems

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["frame", "frame_file", "has_quality_plot", "load_queries", "masters", "night", "problems", "quality_plot",
           "run_query", "table", "target"]


def table(frame) -> tuple[list[str], list[tuple]]:
    """A DataFrame as (columns, rows), missing values as None."""
    frame = frame.astype(object).where(frame.notna(), None)
    return list(frame.columns), [tuple(r) for r in frame.itertuples(index=False)]


def target(session: Session, name: str) -> dict[str, Any] | None:
    """A target's integration per filter, and per filter and night, accepted against total;
    None when no light has that target."""
    per_night = light_integration(session, target=name, by=("filter_name", "night"))
    if not per_night:
        return None
    per_filter: dict[Any, dict[str, Any]] = {}
    for row in per_night:  # the nights' sums: one pass over the lights and their verdicts, not two
        total = per_filter.setdefault(row["filter_name"], {"filter_name": row["filter_name"]})
        for key in ("frames", "exposure_s", "accepted", "accepted_s", "rejected"):
            total[key] = total.get(key, 0) + row[key]
    return {"per_filter": list(per_filter.values()), "per_night": per_night}


def night(session: Session, date: dt.date) -> NightReport:
    """One night: the night report's content (:func:`archive.reports.night.night_summary`),
    without reading any image (the page fetches the thumbnails from the preview route);
    ``empty`` when the catalogue has no frame of it."""
    return night_summary(session, date, thumbnails=False)


def has_quality_plot(report: NightReport) -> bool:
    """Whether :func:`quality_plot` draws something: a light with a time and a measured figure."""
    table = report.quality
    if table.empty or not table["date_obs"].notna().any():
        return False
    return any(metric in table and table[metric].notna().any() for metric in QUALITY_METRICS)


def quality_plot(report: NightReport) -> bytes | None:
    """The night's quality against time as a PNG (:func:`archive.reports.night_html.quality_plot_png`)."""
    return quality_plot_png(report)


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


#: The columns of the master library's table (of :func:`~archive.calib.library.library_table`).
MASTER_COLUMNS = ("frame_id", "kind", "origin", "instrument", "night", "exposure_time_s", "filter_name", "set_temp_c",
                  "n_combined", "is_bad", "bad_reason", "valid_from", "valid_until", "date_obs", "path")


def masters(session: Session, newest: int) -> dict[str, Any]:
    """The newest masters of the library, and per kind the validity of each over time: bars
    from ``valid_from`` (else its DATE-OBS) to ``valid_until`` (else the next master of the same
    kind, instrument and filter, else today), as percentages of the kind's whole span."""
    columns, rows = table(library_table(session, newest=newest)[list(MASTER_COLUMNS)])
    items = [dict(zip(columns, r)) for r in rows]
    today = dt.datetime.combine(dt.date.today(), dt.time())
    lanes: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        item["start"] = item["valid_from"] or item["date_obs"]
        if item["start"] is not None:
            lanes.setdefault((item["kind"], item["instrument"], item["filter_name"]), []).append(item)
    timelines: dict[str, dict[str, Any]] = {}
    for (kind, _instrument, _filter), lane in sorted(lanes.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        lane.sort(key=lambda item: item["start"])
        for item, following in zip(lane, lane[1:] + [None]):
            item["open"] = item["valid_until"] is None
            if not item["open"]:
                item["end"] = item["valid_until"]
            elif following is not None and following["start"] > item["start"]:
                item["end"] = following["start"]
            else:
                item["end"] = max(today, item["start"] + dt.timedelta(days=1))
        timelines.setdefault(kind, {"bars": []})["bars"].extend(lane)
    for timeline in timelines.values():
        bars = timeline["bars"]
        timeline["first"] = first = min(b["start"] for b in bars)
        timeline["last"] = last = max(b["end"] for b in bars)
        span = max((last - first).total_seconds(), 1.0)
        for b in bars:
            b["x"] = 100.0 * (b["start"] - first).total_seconds() / span
            b["width"] = max(100.0 * (b["end"] - b["start"]).total_seconds() / span, 0.3)
    return {"columns": columns, "rows": rows, "timelines": dict(sorted(timelines.items())), "newest": newest}


def problems(session: Session, limit: int) -> dict[str, Any]:
    """Unresolved ingest problems, failed steps, rejected frames (steps that rejected them) and
    frames rejected by quality (:func:`~archive.reduce.quality_report.rejected_frames`), the newest
    ``limit`` of each."""
    problem_columns, problem_list = problem_rows(session, limit=limit)
    failed = table(list_reduction_problems(session, status="failed", limit=limit))
    rejected = table(list_reduction_problems(session, status="rejected", limit=limit))
    by_quality = table(rejected_frames(session, limit=limit))
    return {"problem_columns": problem_columns, "problems": problem_list, "failed": failed, "rejected": rejected,
            "by_quality": by_quality, "limit": limit}
