"""``archive reduce``, ``provenance``, ``stale`` and ``night``: reduction with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import click

from archive.cli import AppContext, pass_app
from archive.cli.catalog import frame_filters
from archive.cli.options import BarProgress, emit, output_format
from archive.db.session import session_scope
from archive.calib.combine import COMBINE_METHODS
from archive.db.frames import FrameFilter


def _executor(config, workers: int | None, serial: bool):
    """The executor the ``[executor]`` section of the (already loaded) reduction config names."""
    from archive.reduce.executor import make_executor

    kind = "serial" if serial else config.executor.get("kind", "process")
    return make_executor(kind, workers if workers is not None else int(config.executor.get("workers", 0)))


def executor_options(func):
    """``--workers N`` and ``--serial``."""
    func = click.option("--serial", is_flag=True, help="Run pixel work in this process (no pool).")(func)
    return click.option("--workers", type=int, metavar="N",
                        help="Processes for pixel work (default [executor] workers; 0: one per core).")(func)


def _print_reduction(summary, quiet: bool) -> None:
    for group, counts in sorted(summary.by_group.items()):
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("calibrated", "registered", "stacked", "failed"))
        if counts.get("rejected"):
            parts += f", {counts['rejected']} rejected"
        click.echo(f"  {group}: {parts}")
    for path in summary.stacked:
        click.echo(f"  stack: {path}")
    if summary.unchanged:
        click.echo(f"  {summary.unchanged} product(s) already up to date")
    for what, why in summary.failures:
        click.echo(f"  FAILED {what}: {why}", err=True)
    for what, why in summary.rejected:
        click.echo(f"  rejected {what}: {why}")
    if not quiet:
        for warning in summary.warnings:
            click.echo(f"  warning: {warning}", err=True)


@click.command()
@frame_filters
@click.option("--stale", "only_stale", is_flag=True, help="Redo exactly the products 'archive stale' lists.")
@click.option("--no-register", is_flag=True, help="Calibrate only; do not register or stack.")
@click.option("--cosmic-rays/--no-cosmic-rays", default=None, help="Clean cosmic rays (astroscrappy).")
@click.option("--method", type=click.Choice(COMBINE_METHODS), help="Stack combine method.")
@click.option("--per-night/--all-nights", default=None,
              help="Register and stack each night separately (default [stack] per_night).")
@click.option("--previews", is_flag=True, default=None, help="Write PNG previews of the stacks.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Products folder.")
@executor_options
@pass_app
@click.pass_context
def reduce(ctx, app: AppContext, filters: FrameFilter, only_stale: bool, no_register: bool, cosmic_rays, method,
           per_night, previews, output, workers, serial) -> None:
    """Calibrate lights with their selected masters, register and stack them, with provenance.

    Lights are chosen with the usual filters; --type, if given, must be 'light'. Each product is
    written to a temporary name and renamed, ingested as a derived frame and linked to its
    inputs; a product already made from the same inputs and parameters is not made again.
    Exit status 1 when anything failed.

    \b
    Examples:
      archive reduce --night 2025-06-01
      archive reduce --target "XO-1 b" --filter z --method sigma_clip --previews
      archive reduce --stale                      # redo what 'archive stale' lists
    """
    from archive.db.models import Frame
    from archive.reduce.config import load_reduction_config
    from archive.reduce.pipeline import reduce_lights
    from archive.calib.rules import default_rulebook
    from archive.reduce.stale import find_stale
    from archive.db.frames import frame_query

    if filters.image_type not in (None, "light"):
        raise click.BadParameter(f"archive reduce works on lights, not {filters.image_type!r}: leave --type out "
                                 "or give --type light", param_hint="--type")
    config = load_reduction_config(app.settings, {
        "calibrate": {"cosmic_rays": cosmic_rays}, "stack": {"method": method, "per_night": per_night},
        "output": {"root": str(output) if output else None, "previews": previews},
    })
    rules = default_rulebook(app.settings)  # resolved once, for the stale look-up and the reduction
    with session_scope(app.engine) as session:
        if only_stale:
            light_ids = sorted({p.light_id for p in find_stale(session, rules=rules) if p.light_id is not None})
        else:
            query = frame_query(FrameFilter(**{**filters.__dict__, "image_type": "light", "include_duplicates": False}),
                                Frame.id)
            light_ids = list(session.scalars(query))
    if not light_ids:
        click.echo("nothing to reduce", err=True)
        return
    with _executor(config, workers, serial) as executor:
        summary = reduce_lights(app.engine, light_ids, config=config, settings=app.settings, executor=executor,
                                rules=rules, register=not no_register, progress=BarProgress(not app.quiet))
    click.echo(f"{len(light_ids)} light(s): {len(summary.calibrated)} calibrated, {len(summary.registered)} registered, "
               f"{len(summary.stacked)} stacked, under {config.products_root()}")
    _print_reduction(summary, app.quiet)
    if not summary.ok:
        ctx.exit(1)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--tree", "as_tree", is_flag=True, help="The whole tree down to the raw frames, one frame a line.")
@click.option("--used-by", is_flag=True, help="The reverse: every product FILE went into, each under its input.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the whole tree, or the products).")
@pass_app
def provenance(app: AppContext, file: Path, as_tree: bool, used_by: bool, as_json: bool) -> None:
    """Summarize where a product came from: its steps, raw frames by type, masters used.

    --tree prints the whole tree down to the raw frames, one frame a line; --used-by prints
    every product FILE went into, each under the line of the product it was made from.

    \b
    Examples:
      archive provenance reduced/stacks/XO1-b/z/XO1-b_z_60s_1a2b3c4d5e.fits
      archive provenance --tree stack.fits | less
      archive provenance --json stack.fits > stack.provenance.json
      archive provenance --used-by masters/dcam-spare/dark/master_dark_....fits
    """
    from archive.cli import provenance_text as text
    from archive.cli.table import terminal_width
    from archive.db import provenance as prov
    from archive.reports.catalog import stack_exposure_s

    width = terminal_width()
    with session_scope(app.engine) as session:
        frame = prov.frame_at_path(session, file)
        if used_by:
            products = prov.used_by(session, frame)
            if as_json:
                click.echo(json.dumps(products, indent=2, default=str))
            elif not products:
                click.echo(f"{file}: used by no product", err=True)
            else:
                click.echo("\n".join(text.format_used_by(prov.frame_summary(session, frame), products, width)))
            return
        tree = prov.provenance_tree(session, frame)
        total = stack_exposure_s(frame.header, frame.exposure_time_s) if frame.image_type == "stacked" else None
    if as_json:
        click.echo(json.dumps(tree, indent=2, default=str))
    elif as_tree:
        click.echo("\n".join(text.format_tree(tree, width)))
    else:
        lines = text.format_summary(prov.provenance_summary(tree), width, total_exposure_s=total)
        click.echo("\n".join(lines))
        if "reduction" in tree:
            click.echo("(every frame: --tree; as data: --json)", err=True)


@click.command()
@output_format
@pass_app
def stale(app: AppContext, fmt: str) -> None:
    """List products whose inputs would now be chosen differently.

    A calibrated frame is stale when a master it used was marked bad, a better master was
    built or ingested, a master now exists where none did, or the matching rules changed;
    registered and stacked frames made from it are stale too. A stack is stale when the
    quality verdicts of its lights changed (quality rules, a new measurement version, an
    'archive quality accept|reject'). 'archive reduce --stale' redoes exactly these.

    \b
    Examples:
      archive stale
      archive stale --format json
    """
    from archive.calib.rules import default_rulebook
    from archive.reduce.stale import find_stale

    with session_scope(app.engine) as session:
        rows = [(p.frame_id, p.step, p.path, "; ".join(p.reasons))
                for p in find_stale(session, rules=default_rulebook(app.settings))]
    emit((["frame_id", "step", "path", "reasons"], rows), fmt)


@click.command()
@click.argument("search", required=False)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Imaging root to search (default [night] imaging_root or ARCHIVE_IMAGING_ROOT).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Products folder.")
@click.option("--dry-run", is_flag=True, help="Show the folders and lights that would be processed; write nothing.")
@click.option("--previews", is_flag=True, default=None, help="Write PNG previews of the masters and stacks.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure and judge the night's frames (archive measure) before stacking.")
@executor_options
@pass_app
@click.pass_context
def night(ctx, app: AppContext, search: str | None, root: Path | None, output: Path | None, dry_run: bool,
          previews, measure, workers, serial) -> None:
    """After a night: ingest, build masters, calibrate, register, stack, and summarize.

    Processes the folders under the imaging root whose path contains SEARCH (default: last
    night's date as 2026-11-20, 20261120 and 2026_11_20). A failing folder or target is
    reported and the loop goes on; the exit status is 1 when anything failed. Safe to run
    twice (the second run does nothing) and to interrupt (the next run completes the work).
    Ends by writing the night report (archive night-report) of each observing night into the
    products folder, and prints its path.

    \b
    Examples:
      archive night                                   # last night, configured imaging root
      archive night 2025-06-01 --root /data/imaging --dry-run
      archive --db postgresql+psycopg://obs@db/archive night 20250601 --workers 2
    """
    from archive.reduce.config import load_reduction_config
    from archive.workflows.night import run_night

    config = load_reduction_config(app.settings, {
        "night": {"imaging_root": str(root) if root else None},
        "output": {"root": str(output) if output else None, "previews": previews},
    })
    with _executor(config, workers, serial) as executor:
        summary = run_night(app.catalogue(create=True), search, config=config, settings=app.settings, executor=executor,
                            dry_run=dry_run, progress=BarProgress(not app.quiet), measure=measure)
    if not summary.folders:
        click.echo(f"no folder under {config.imaging_root} matches {' or '.join(summary.searches)}", err=True)
        return
    for folder in summary.folders:
        if dry_run:
            click.echo(f"{folder.folder}: would ingest, build masters, reduce ({folder.lights} light(s) already catalogued)")
            continue
        status = "ok" if folder.ok else "FAILED"
        click.echo(f"{folder.folder}: {status}: {folder.ingested_new} new file(s), {folder.masters_built} master(s) built, "
                   f"{folder.lights} light(s), {len(folder.reduction.calibrated)} calibrated, "
                   f"{len(folder.reduction.registered)} registered, {len(folder.reduction.stacked)} stacked")
        for what, why in folder.failures:
            click.echo(f"  FAILED {what}: {why}", err=True)
        for path in folder.masters:
            click.echo(f"  master: {path}")
        if folder.solved or folder.not_solved:
            click.echo(f"  {folder.solved} light(s) plate-solved, {len(folder.not_solved)} not solved")
        _print_reduction(folder.reduction, app.quiet)
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    if not dry_run:
        click.echo(f"products under {summary.products_root}")
        for path in summary.reports:
            click.echo(f"night report: {path}")
    if not dry_run and not summary.ok:
        ctx.exit(1)
