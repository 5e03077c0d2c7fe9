"""``archive solve`` and ``archive coverage``: where on the sky."""

from __future__ import annotations

import sys

import click

from archive.cli import AppContext, pass_app
from archive.cli.catalog import frame_filters
from archive.cli.options import BarProgress, emit, output_format
from archive.db.frames import FrameFilter
from archive.db.session import session_scope


@click.command()
@frame_filters
@pass_app
def solve(app: AppContext, filters: FrameFilter) -> None:
    """Plate-solve the lights that have no WCS, with astrometry.net's solve-field.

    Frames catalogued before footprints existed first get theirs from their headers. Each
    frame without a WCS is then solved with hints from its pointing RA/Dec and its plate
    scale (focal length and pixel size), as a 'solve' reduction (see 'archive provenance').
    The solution is kept in the catalogue; raw files are never modified. Settings:
    configs/sky.toml ([sky.solve] in the user file). Needs the Debian packages astrometry.net
    and astrometry-data-tycho2. Exit status 1 when a frame did not solve.

    \b
    Examples:
      archive solve
      archive solve --night 2025-04-09 --target "M 94"
    """
    from archive.reduce.solve import solve_frames

    summary = solve_frames(app.engine, filters, settings=app.settings, progress=BarProgress(not app.quiet))
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        sys.exit(1)


@click.command()
@frame_filters
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Draw the map into this PNG.")
@click.option("--by-filter", is_flag=True, help="One map (and one set of rows) per filter.")
@click.option("--order", type=click.IntRange(3, 13), help="HEALPix order of the map (default from the field size).")
@click.option("--at", "at", nargs=2, type=float, metavar="RA DEC",
              help="Have I imaged this position: frames, nights and integration per filter at RA DEC (deg).")
@output_format
@pass_app
def coverage(app: AppContext, filters: FrameFilter, output, by_filter, order, at, fmt) -> None:
    """Integration per sky cell (HEALPix), as rows and, with -o, a map.

    Each exposure counts once (raw lights unless --type says otherwise); a frame adds its
    exposure time to the cells whose centre its footprint contains. With --at, answers "have I
    imaged this position" instead.

    \b
    Examples:
      archive coverage --type light -o coverage.png
      archive coverage --target "M 94" --by-filter -o m94.png
      archive coverage --at 192.72 41.12
    """
    from archive.reports.coverage import coverage_table, draw_coverage, imaged_at

    with session_scope(app.engine) as session:
        if at:
            emit(imaged_at(session, at[0], at[1], filters), fmt)
            return
        table, used = coverage_table(session, filters, order=order, by_filter=by_filter)
    if output:
        draw_coverage(table, used, output)
        click.echo(f"{output}: {len(table)} cell(s) at HEALPix order {used}", err=True)
    table = table.assign(integration_h=table["integration_s"] / 3600.0).drop(columns=["integration_s"])
    emit(table if by_filter else table.drop(columns=["filter_name"]), fmt)
