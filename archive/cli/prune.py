"""``archive prune``: delete intermediate products that can be remade, keeping their rows."""

from __future__ import annotations

from pathlib import Path

import click

from archive.cli import AppContext, pass_app
from archive.cli.catalog import frame_filters
from archive.cli.options import emit, output_format
from archive.db.frames import FrameFilter
from archive.db.prune import DEFAULT_KINDS, PRUNABLE_KINDS


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


@click.command()
@frame_filters
@click.option("--kind", "kinds", multiple=True, type=click.Choice(PRUNABLE_KINDS), metavar="KIND",
              help=f"Product kind to prune, repeatable: {', '.join(PRUNABLE_KINDS)} "
                   f"(default {' and '.join(DEFAULT_KINDS)}; masters and stacks only when named).")
@click.option("--dry-run", is_flag=True, help="List what would be deleted, with the total size; delete nothing.")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Products folder (default [output] root); only files under it and the master library are pruned.")
@output_format
@pass_app
@click.pass_context
def prune(ctx, app: AppContext, filters: FrameFilter, kinds: tuple[str, ...], dry_run: bool, yes: bool,
          output: Path | None, fmt) -> None:
    """Delete intermediate products that can be remade from their provenance, keeping their rows.

    Lists the calibrated and registered frames (masters and stacks only when named with
    --kind) made by a recorded reduction whose inputs are all still on disk, with their total
    size, and deletes them after confirmation. Raw frames are never deleted. Each file is
    checked against the catalogue first (size and SHA-256): one edited since it was recorded is
    refused, with the reason (exit status 1). The catalogue keeps the frames and their
    provenance ('archive provenance' still reads them); 'archive reduce' remakes a pruned
    product when asked for it again.

    \b
    Examples:
      archive prune --dry-run                         # what would go, and how much
      archive prune --night 2025-06-01 --yes
      archive prune --kind registered --target "XO-1 b"
      archive prune --kind master_dark --kind stacked --until 2025-01-01
    """
    from archive.calib.library import default_library
    from archive.gather.prune import plan_prune
    from archive.gather.prune import prune as prune_files
    from archive.reduce.config import load_reduction_config

    if filters.image_type is not None:
        raise click.BadParameter("archive prune chooses products by --kind, not --type", param_hint="--type")
    config = load_reduction_config(app.settings, {"output": {"root": str(output) if output else None}})
    roots = [config.products_root(), default_library(app.settings).expanduser()]
    plan = plan_prune(app.engine, filters, kinds or DEFAULT_KINDS, roots)
    rows = [(c.frame_id, c.image_type, plan.sizes[c.copy_id], c.path) for c in plan.copies]
    if not rows:
        click.echo("nothing to prune", err=True)
        return
    emit((["frame_id", "image_type", "size_bytes", "path"], rows), fmt)
    missing = sum(s is None for s in plan.sizes.values())
    total = (f"{len(rows) - missing} file(s), {_size(plan.total_bytes)} ({plan.total_bytes} bytes)"
             + (f"; {missing} already gone" if missing else ""))
    click.echo(("would delete " if dry_run else "") + total, err=True)
    if dry_run:
        return
    if not yes:
        click.confirm(f"Delete {total}?", abort=True, err=True)
    result = prune_files(app.engine, plan)
    for path, reason in result.refused:
        click.echo(f"refused {path}: {reason}", err=True)
    click.echo(f"pruned {len(result.pruned)} file(s), {_size(result.freed_bytes)} given back; "
               f"{len(result.refused)} refused")
    if result.refused:
        ctx.exit(1)
