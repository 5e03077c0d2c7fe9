"""Provenance for people: a summary, the whole tree, and what a frame went into, fitted to the
terminal. The data come from :mod:`archive.db.provenance`; only the wording is here."""

from __future__ import annotations

import json
import textwrap
from pathlib import PurePath
from typing import Any

from archive.cli.table import escape_controls, format_duration, shorten

__all__ = ["escape_controls", "fit", "format_summary", "format_tree", "format_used_by", "frame_line"]


def fit(line: str, width: int) -> str:
    """``line`` shortened at its end to ``width`` cells (control characters escaped)."""
    return shorten(escape_controls(line), width, "note")


def _when(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _value(value: Any) -> str:
    """A parameter value for people: floats to 6 significant digits, structures as compact JSON."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def file_name(path: str | None) -> str:
    """The last part of ``path`` ('(no file)' for None)."""
    return PurePath(path).name if path else "(no file)"


def frame_line(node: dict[str, Any], *, full_path: bool = False) -> str:
    """``stacked #69 XO1-b z 60 s FILE``: type, id, target, filter, exposure, file."""
    parts = [f"{node.get('image_type') or '?'} #{node['frame_id']}"]
    parts += [str(node[k]) for k in ("target", "filter") if node.get(k)]
    if node.get("exposure_time_s") is not None:
        parts.append(f"{node['exposure_time_s']:g} s")
    parts.append((node.get("path") or "(no file)") if full_path else file_name(node.get("path")))
    return " ".join(parts)


def reduction_lines(reduction: dict[str, Any], indent: str, width: int) -> list[str]:
    """``<- step (reduction N, status, host, time)`` and its parameters wrapped below it."""
    head = (f"{indent}<- {reduction['step']} (reduction {reduction['reduction_id']}, {reduction['status']}, "
            f"{reduction['host']}, {_when(reduction['finished_at'] or reduction['started_at'])})")
    lines = [fit(head, width)]
    pad = indent + "     "

    def wrapped(text: str) -> list[str]:
        return [fit(line, width) for line in textwrap.wrap(escape_controls(text), max(20, width - len(pad)),
                                                            initial_indent=pad, subsequent_indent=pad,
                                                            break_on_hyphens=False)]

    params = ", ".join(f"{k}={_value(v)}" for k, v in sorted((reduction.get("parameters") or {}).items()))
    if params:
        lines += wrapped(params)
    results = ", ".join(f"{k}={_value(v)}" for k, v in sorted((reduction.get("results") or {}).items()))
    if results:
        lines += wrapped("results: " + results)
    if reduction.get("status") == "failed":
        kind = f" ({reduction['failure_kind']})" if reduction.get("failure_kind") else ""
        lines += wrapped(f"failed{kind}: {reduction.get('message') or 'no message'}")
    return lines


def format_tree(tree: dict[str, Any], width: int, indent: str = "", _shown: set[int] | None = None) -> list[str]:
    """Lines of a provenance tree: one frame a line (the root with its whole path, the others
    by file name), each product's step and parameters below it. A product reached again (a
    master used by every light) is expanded the first time only."""
    shown = set() if _shown is None else _shown
    role = f"[{tree['role']}] " if tree.get("role") else ""
    line = indent + role + frame_line(tree, full_path=_shown is None)
    if "reduction" in tree and tree["frame_id"] in shown:
        return [fit(line + "  (inputs shown above)", width)]
    shown.add(tree["frame_id"])
    lines = [fit(line, width)]
    if "reduction" in tree:
        lines += reduction_lines(tree["reduction"], indent + "  ", width)
        for child in tree.get("inputs", []):
            lines += format_tree(child, width, indent + "    ", shown)
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "none"


def format_summary(summary: dict[str, Any], width: int, *, total_exposure_s: float | None = None) -> list[str]:
    """A provenance summary in a few lines: the frame, how it was made, the steps below it,
    the products and raw frames it comes from, the masters used."""
    frame = summary["frame"]
    lines = [fit(frame_line(frame), width), fit(f"  file: {frame.get('path') or '(no file)'}", width)]
    if frame.get("date_obs"):
        lines.append(fit(f"  date_obs: {_when(frame['date_obs'])} UTC", width))
    if total_exposure_s is not None:
        lines.append(fit(f"  total exposure: {format_duration(total_exposure_s)}", width))
    if summary["reduction"] is None:
        lines.append("  no recorded reduction: a raw frame, or a product made elsewhere")
        return lines
    lines += reduction_lines(summary["reduction"], "  ", width)
    raw_total = sum(summary["raw"].values())
    for label, counts in (("steps", summary["steps"]), ("products used", summary["products"])):
        # wrapped between items, not cut: with a bad-pixel mask's step the list outgrows a line
        text = f"{label}: " + escape_controls(_counts(counts)).replace(" ", "\xa0").replace(",\xa0", ", ")
        lines += [fit(line.replace("\xa0", " "), width) for line in textwrap.wrap(
            text, max(20, width), initial_indent="  ", subsequent_indent="    ")]
    lines.append(fit(f"  raw frames: {raw_total} ({_counts(summary['raw'])})", width))
    for master in summary["masters"]:
        lines.append(fit(f"  master: {frame_line(master)}", width))
    return lines


def format_used_by(frame: dict[str, Any], products: list[dict[str, Any]], width: int) -> list[str]:
    """The products ``frame`` went into, each under the line of the product it was made from
    (``via``): ``step: type #id target filter exposure file``."""
    children: dict[int, list[dict[str, Any]]] = {}
    for p in products:
        children.setdefault(p["via"], []).append(p)
    lines = [fit(frame_line(frame, full_path=True), width)]
    done: set[int] = set()

    def walk(parent: int, indent: str) -> None:
        for p in children.get(parent, []):
            if p["frame_id"] in done:
                continue
            done.add(p["frame_id"])
            lines.append(fit(f"{indent}{p['step']}: {frame_line(p)}", width))
            walk(p["frame_id"], indent + "  ")

    walk(frame["frame_id"], "  ")
    for p in products:  # made from a frame not listed above (should not happen): shown flat
        if p["frame_id"] not in done:
            lines.append(fit(f"  {p['step']}: {frame_line(p)}", width))
    return lines
