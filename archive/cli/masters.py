"""``archive masters``: build the master calibration library and choose masters for lights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import click
from archive.calib import (
    RuleBook, build_masters, default_library, default_rulebook, explain_selections, library_table, mark_bad, missing_calibrations,
    record_selection, select_masters, set_validity,
)
from archive.db.provenance import frame_at_path
from archive.cli import AppContext, pass_app
from archive.cli.catalog import frame_filters
from archive.cli.options import BarProgress, emit, output_format
from archive.db.models import CALIBRATION_KINDS, LIBRARY_KINDS, MASTER_KINDS, Frame
from archive.db.session import session_scope
from archive.db.frames import FrameFilter, frame_query


def _rules_option(func: Callable) -> Callable:
    return click.option(
        "--rules", "rules_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="A folder of matching rules (default.toml + per-instrument overrides); default: the "
        "bundled configs/matching, or [masters] rules in the configuration.",
    )(func)


def _book(app: AppContext, rules_dir: Path | None) -> RuleBook:
    return RuleBook(rules_dir) if rules_dir else default_rulebook(app.settings)


def _kinds_option(func: Callable, kinds: tuple[str, ...] = CALIBRATION_KINDS) -> Callable:
    return click.option(
        "--kind", "kinds", multiple=True, type=click.Choice(kinds),
        help="Calibration kind (repeat for several; default all).",
    )(func)


def _build_kinds_option(func: Callable) -> Callable:
    return _kinds_option(func, LIBRARY_KINDS)


@click.group()
def masters() -> None:
    """Build the master bias/dark/flat library and choose masters for lights.

    Matching rules are data (configs/matching/*.toml): the same rules group raw frames into
    masters and select masters for lights.

    \b
    Examples:
      archive masters build --night 2025-06-01
      archive masters select --night 2025-06-01 --explain
      archive masters missing
    """


@masters.command()
@click.option("--night", type=click.DateTime(["%Y-%m-%d"]), help="Only raw calibrations of this local night.")
@click.option("--since", type=click.DateTime(), help="DATE-OBS on or after (UTC).")
@click.option("--until", type=click.DateTime(), help="DATE-OBS before (UTC).")
@click.option("--instrument", help="Instrument: a model (INSTRUME: all its units) or one unit ('MODEL SERIAL').")
@_build_kinds_option
@click.option("--library", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the masters are written to (default: [masters] library of the configuration, "
              "else ~/.local/share/archive/masters).")
@click.option("--memory-limit", "memory_mb", type=click.IntRange(64), help="Memory per combine, MB (default 2048).")
@_rules_option
@pass_app
def build(app: AppContext, night, since, until, instrument, kinds, library, memory_mb, rules_dir) -> None:
    """Group raw bias/dark/flat frames by the matching rules and build one master per group.

    Bias first, then darks (bias-subtracted), then flats (bias/dark-corrected, median 1),
    then a bad-pixel mask per set-up and night (hot pixels from the master darks, or from the
    lights when no dark serves them; cold from the flats; configs/detector.toml [bad_pixels]).
    Each master is written to LIBRARY/<instrument>/<kind>/, ingested and linked to its inputs.
    Rebuilding with the same inputs and rules does nothing.

    \b
    Examples:
      archive masters build --night 2025-06-01
      archive masters build --kind dark --since 2025-06-01 --until 2025-07-01
      archive masters build --library /data/masters --memory-limit 1024
    """
    filters = FrameFilter(night=night.date() if night else None, since=since, until=until, instrument=instrument)
    summary = build_masters(
        app.engine, filters=filters, kinds=kinds or LIBRARY_KINDS, rules=_book(app, rules_dir),
        library=library or default_library(app.settings),
        memory_limit_mb=memory_mb, settings=app.settings,
        progress=BarProgress(not app.quiet),
    )
    for kind, frame_id, path in summary.built:
        click.echo(f"built master {kind} {frame_id}: {path}")
    click.echo(f"{len(summary.built)} built, {summary.unchanged} unchanged (same inputs and rules)"
               + (f", {summary.busy} being built by another run" if summary.busy else ""))
    for kind, path, reason in summary.skipped_inputs:
        click.echo(f"left out of a master {kind}: {reason}", err=True)
    for kind, what, count in summary.too_small:
        click.echo(f"too few frames for a master {kind}: {what} ({count})", err=True)
    if summary.skipped_no_date:
        click.echo(f"{summary.skipped_no_date} raw calibration(s) without DATE-OBS left out", err=True)
    for kind, what, reason in summary.failed:
        click.echo(f"failed: master {kind} {what}: {reason}", err=True)
    if summary.failed:
        raise SystemExit(1)


def _selection_rows(selections) -> tuple[list[str], list[tuple]]:
    rows = [
        (fid, kind, sel.method, sel.master_id, sel.scale,
         ";".join(f"{m}:{w:.4g}" for m, w in sel.weights) if sel.method == "interpolated"
         else ";".join(f"{m}@{w:g}s" for m, w in sel.weights) if sel.method == "model" else "",
         sel.rule_version, "" if sel.found else sel.explanation)
        for (fid, kind), sel in sorted(selections.items())
    ]
    return ["frame_id", "kind", "method", "master_id", "scale", "weights", "rule_version", "why"], rows


@masters.command("select")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@frame_filters
@_kinds_option
@click.option("--explain", is_flag=True, help="List every candidate with its rank or the rule that removed it.")
@click.option("--record", is_flag=True, help="Store the decisions (calibration_selections) for later queries.")
@_rules_option
@output_format
@pass_app
def select_cmd(app: AppContext, files, filters: FrameFilter, kinds, explain: bool, record: bool, rules_dir, fmt) -> None:
    """Choose the master bias, dark and flat for FILES, or for every light matching the filters.

    Nearest in time among the masters that pass the rules; darks prefer an exact exposure, then
    the nearest longer bias-subtracted dark scaled by exposure, then an interpolated one, then a
    dark ladder's model (method "model") within its exposure range, then a shorter dark scaled up.

    \b
    Examples:
      archive masters select /data/2025-06-01/XO1-b_z_001.fits --explain
      archive masters select --night 2025-06-01 --target "XO-1"
      archive masters select --night 2025-06-01 --kind dark --record --format csv
    """
    book = _book(app, rules_dir)
    kinds = kinds or CALIBRATION_KINDS
    with session_scope(app.engine, write=True) as session:
        if files:
            ids = [frame_at_path(session, path).id for path in files]
        else:
            if filters.image_type is None:
                filters = dataclasses.replace(filters, image_type="light")
            ids = list(session.scalars(frame_query(filters, Frame.id).order_by(Frame.date_obs_s, Frame.id)))
        if explain or record:
            selections = explain_selections(session, ids, kinds, rules=book)
        else:
            selections = select_masters(session, ids, kinds, rules=book)
        if record:
            for sel in selections.values():
                record_selection(session, sel)
    if explain and fmt == "table":
        for (fid, kind), sel in sorted(selections.items()):
            click.echo(f"frame {fid} {kind}: {sel.explanation}")
            for v in sorted(sel.candidates, key=lambda v: (v.rank is None, v.rank or 0, v.master_id)):
                status = f"rank {v.rank} ({v.method})" if v.rank else f"removed by {v.rejected_by}: {v.reason}"
                when = v.date_obs.isoformat(timespec="seconds") if v.date_obs else "no DATE-OBS"
                click.echo(f"    master {v.master_id} {when} {v.exposure_time_s} s: {status}")
    elif explain:
        rows = [{"frame_id": fid, "kind": kind, **v.as_dict()} for (fid, kind), sel in sorted(selections.items())
                for v in sel.candidates]
        names = list(dict.fromkeys(k for row in rows for k in row))
        emit((names, [tuple(row.get(k) for k in names) for row in rows]), fmt)
    else:
        emit(_selection_rows(selections), fmt)
    if not selections:
        click.echo("no frames match", err=True)
    elif files and not all(sel.found for sel in selections.values()):
        raise SystemExit(1)


def _master_ids(session, refs: tuple[str, ...]) -> list[int]:
    ids = []
    for ref in refs:
        ids.append(int(ref) if ref.isdigit() else frame_at_path(session, ref).id)
    return ids


@masters.command("mark-bad")
@click.argument("masters_", metavar="MASTER...", nargs=-1, required=True)
@click.option("--reason", help="Why (stored with the flag).")
@click.option("--undo", is_flag=True, help="Mark the masters good again.")
@pass_app
def mark_bad_cmd(app: AppContext, masters_, reason, undo) -> None:
    """Flag masters (frame id or file path) as bad: they are never selected again.

    \b
    Examples:
      archive masters mark-bad 1234 --reason "light leak"
      archive masters mark-bad ~/.local/share/archive/masters/cam/dark/master_dark_x.fits
      archive masters mark-bad 1234 --undo
    """
    with session_scope(app.engine, write=True) as session:
        rows = mark_bad(session, _master_ids(session, masters_), reason, bad=not undo)
    click.echo(f"{len(rows)} master(s) marked {'good' if undo else 'bad'}")


@masters.command()
@click.argument("master")
@click.option("--from", "valid_from", type=click.DateTime(), help="Valid from (UTC, inclusive).")
@click.option("--until", "valid_until", type=click.DateTime(), help="Valid until (UTC, exclusive).")
@pass_app
def validity(app: AppContext, master: str, valid_from, valid_until) -> None:
    """Set the time range in which a master (frame id or path) may be selected; omit a bound to open it.

    \b
    Examples:
      archive masters validity 1234 --from 2025-06-01 --until 2025-06-15
      archive masters validity 1234                 # valid at any time again
    """
    with session_scope(app.engine, write=True) as session:
        try:
            row = set_validity(session, _master_ids(session, (master,))[0], valid_from, valid_until)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    click.echo(f"master {row.frame_id} valid from {row.valid_from or 'any time'} until {row.valid_until or 'any time'}")


@masters.command()
@frame_filters
@_kinds_option
@_rules_option
@output_format
@pass_app
def missing(app: AppContext, filters: FrameFilter, kinds, rules_dir, fmt) -> None:
    """Lights that no master can calibrate, grouped by the calibration set needed: what to shoot next.

    \b
    Examples:
      archive masters missing
      archive masters missing --since 2025-06-01 --kind flat --format csv
    """
    book = _book(app, rules_dir)
    if filters.image_type is None:
        filters = dataclasses.replace(filters, image_type="light")
    with session_scope(app.engine) as session:
        ids = list(session.scalars(frame_query(filters, Frame.id)))
        table = missing_calibrations(session, ids, kinds or CALIBRATION_KINDS, rules=book)
    emit(table, fmt)


@masters.command("list")
@click.option("--kind", type=click.Choice(MASTER_KINDS), help="Only this kind (dark_model: dark ladders' models).")
@output_format
@pass_app
def list_cmd(app: AppContext, kind, fmt) -> None:
    """List the masters of the library (built here or made elsewhere), with flags and validity.

    \b
    Examples:
      archive masters list
      archive masters list --kind dark --format csv
    """
    with session_scope(app.engine) as session:
        emit(library_table(session, kind), fmt)


__all__ = ["masters"]
