"""``archive show``: everything the catalogue knows of one frame."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import click

from archive.cli import AppContext, pass_app
from archive.db.session import session_scope


def _unit(column: str) -> str:
    from archive.cli.table import COLUMNS

    heading = COLUMNS[column].heading if column in COLUMNS else ""
    return heading[heading.find("[") + 1 : heading.find("]")] if "[" in heading else ""


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_record(record, width: int) -> list[str]:
    """Lines of ``archive show`` for people (sections: values, copies, masters, provenance, header)."""
    from archive.cli import provenance_text as text
    from archive.cli.table import COLUMNS, Column, format_duration, format_value, render_table

    values = {column: value for column, value, _ in record.values}
    summary = {"frame_id": record.frame_id, "image_type": values["image_type"], "target": values["target"],
               "filter": values["filter_name"], "exposure_time_s": values["exposure_time_s"],
               "path": record.copies[0]["path"] if record.copies else None}
    lines = [text.fit(f"frame {text.frame_line(summary, full_path=True)}", width), f"sha256 {record.sha256}"]
    if record.total_exposure_s is not None:
        lines.append(f"total exposure {format_duration(record.total_exposure_s)}")
    if record.duplicate_of:
        lines.append(f"a duplicate exposure of frame {record.duplicate_of} (same instrument and DATE-OBS)")
    if record.duplicates:
        lines.append(f"duplicate exposures of it: frames {', '.join(map(str, record.duplicates))}")

    lines += ["", "normalized values (and the keyword or rule each came from)"]
    rows = []
    for column, value, source in record.values:
        if isinstance(value, dt.datetime):  # as stored, to the millisecond
            shown = value.isoformat(sep=" ", timespec="milliseconds" if value.microsecond else "seconds")
        else:
            shown = format_value(value, COLUMNS.get(column, Column(column)))
        unit = _unit(column)
        rows.append((column, f"{shown} {unit}".strip() if shown and unit else shown,
                     source or ("no keyword or rule gave a value" if value is None else "")))
    table, _ = render_table(["column", "value", "from"], rows, width=width - 2, chosen=["column", "value", "from"])
    lines += ["  " + line for line in table[1:]]
    for key, source in record.other_sources.items():
        lines.append(text.fit(f"  {key}: {source}", width))
    for severity, reason in record.problems:
        lines.append(text.fit(f"  {severity}: {reason}", width))

    lines += ["", f"copies ({len(record.copies)})"]
    for c in record.copies:
        flags = ", ".join(f for f, on in (("current", c["current"]), ("canonical", c["canonical"])) if on) or (
            f"pruned {c['pruned_at']:%Y-%m-%d %H:%M}" if c.get("pruned_at") else "history")
        lines.append(f"  {text.escape_controls(c['path'])}")  # whole, to be copied
        lines.append(text.fit(f"      {flags}; {_size(c['size'])}; modified {format_value(c['mtime'], Column('', 'time'))} "
                              f"UTC; ingested {format_value(c['ingested_at'], Column('', 'time'))} UTC", width))

    lines += ["", "masters chosen" + ("" if record.selections else ": none recorded")]
    for s in record.selections:
        master = f"#{s['master_id']} {text.file_name(s['master_path'])}" if s["master_id"] is not None else "none"
        scale = f" x {s['scale']:.4g}" if s["scale"] not in (None, 1.0) else ""
        lines.append(text.fit(f"  {s['kind']}: {s['method']} {master}{scale} (rules {s['rule_version']}, "
                              f"{format_value(s['decided_at'], Column('', 'time'))})", width))

    lines.append("")
    if record.provenance is None:
        lines.append("provenance: a raw frame (or made elsewhere)")
    else:
        lines.append("provenance")
        lines += text.format_summary(record.provenance, width)[1:]
    lines.append(text.fit(f"  used by {record.used_by} product(s)"
                          + (" (archive provenance --used-by)" if record.used_by else ""), width))

    cards = record.header.split("\n") if record.header else []
    lines += ["", f"header ({len(cards)} cards)"]
    lines += [text.escape_controls(card) for card in cards]
    if record.primary_header:
        primary = record.primary_header.split("\n")
        lines += ["", f"primary header ({len(primary)} cards)"]
        lines += [text.escape_controls(card) for card in primary]
    return lines


@click.command()
@click.argument("frame")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (values as stored).")
@pass_app
def show(app: AppContext, frame: str, as_json: bool) -> None:
    """Show everything known of one frame (FRAME is a frame id or the path of a copy).

    The normalized values with the keyword or rule each came from, the copies on disk, the
    masters chosen for it, a provenance summary and the whole header.

    \b
    Examples:
      archive show 1234
      archive show /data/2025-06-01/XO1-b_z_20250602_041125.fits
      archive show reduced/stacks/XO1-b/z/XO1-b_z_60s_1a2b3c4d5e.fits --json
    """
    from archive.cli.table import terminal_width
    from archive.reports.frame import frame_record

    with session_scope(app.engine) as session:
        record = frame_record(session, frame)
    if as_json:
        data = dataclasses.asdict(record)
        data["values"] = {column: {"value": value, "from": source} for column, value, source in record.values}
        click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        click.echo("\n".join(format_record(record, terminal_width())))
