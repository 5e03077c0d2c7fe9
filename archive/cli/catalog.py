"""``archive frames``, ``summary``, ``problems`` and ``report``: looking at the catalogue."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import click

from archive.cli import AppContext, pass_app
from archive.cli.options import emit, output_format, parse_params
from archive.db.models import IMAGE_TYPES
from archive.db.session import session_scope
from archive.reports import FrameFilter, load_queries, run_query
from archive.reports.catalog import SUMMARY_KEYS, frame_rows, problem_rows, summary_rows

#: The footprint filters (:class:`FrameFilter` ``cone`` and ``covers``) as options: for
#: 'archive frames' and its kin (:func:`frame_filters`) and for 'archive project create'.
cone_option = click.option("--cone", nargs=3, type=float, metavar="RA DEC RADIUS",
                           help="Footprint within RADIUS of RA DEC (all in deg): the frame overlaps the cone.")
covers_option = click.option("--covers", nargs=2, type=float, metavar="RA DEC", help="Footprint contains RA DEC (deg).")


def frame_filters(func: Callable) -> Callable:
    """The usual frame filters as options, gathered into a ``filters`` FrameFilter argument."""
    options = [
        click.option("--type", "image_type", type=click.Choice(IMAGE_TYPES), help="Image type."),
        click.option("--filter", "filter_name", help="Filter name (case-insensitive)."),
        click.option("--night", type=click.DateTime(["%Y-%m-%d"]), help="Local observing night, YYYY-MM-DD."),
        click.option("--target", help="Target (OBJECT), matched loosely and across catalogues: 'M 94' = 'M94' = "
                     "'NGC 4736'; also frames whose footprint contains it."),
        click.option("--instrument", help="Instrument: a model (INSTRUME: all its units) or one unit "
                     "('Seestar S50 S50_1d3fe189'), case-insensitive."),
        click.option("--since", type=click.DateTime(), help="DATE-OBS on or after (UTC)."),
        click.option("--until", type=click.DateTime(), help="DATE-OBS before (UTC)."),
        click.option("--min-exposure", type=float, help="Exposure time at least (s)."),
        click.option("--max-exposure", type=float, help="Exposure time at most (s)."),
        cone_option,
        covers_option,
    ]

    @functools.wraps(func)
    def wrapper(*args, image_type, filter_name, night, target, instrument, since, until, min_exposure, max_exposure,
                cone, covers, **kwargs):
        kwargs["filters"] = FrameFilter(
            image_type=image_type, filter_name=filter_name, night=night.date() if night else None,
            target=target, instrument=instrument, since=since, until=until,
            min_exposure_s=min_exposure, max_exposure_s=max_exposure,
            cone=tuple(cone) if cone else None, covers=tuple(covers) if covers else None,
        )
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.command()
@frame_filters
@click.option("--accepted", "verdict", flag_value="accepted",
              help="Only frames the quality judgement accepts (see 'archive quality'; never measured counts as accepted).")
@click.option("--rejected", "verdict", flag_value="rejected",
              help="Only frames the quality judgement rejects: a reject flag and no accept override, or a reject override.")
@output_format
@pass_app
def frames(app: AppContext, filters: FrameFilter, verdict: str | None, fmt: str) -> None:
    """List frames, one row each, ordered by DATE-OBS.

    \b
    Examples:
      archive frames --night 2025-06-01 --type light
      archive frames --target "M 31" --filter Ha --format csv > m31_ha.csv
      archive frames --type dark --min-exposure 300 --format json
      archive frames --cone 250.42 36.46 0.5 --type light
      archive frames --covers 192.72 41.12
      archive frames --type light --rejected
    """
    if verdict is not None:
        from archive.calib.quality import load_quality_rules
        from archive.reduce.measure import measurement_version

        version = measurement_version(load_quality_rules(settings=app.settings).measure.get("version", "1"))
        filters = dataclasses.replace(filters, verdict=verdict, measurement_version=version)
    with session_scope(app.engine) as session:
        emit(frame_rows(session, filters), fmt)


@click.command()
@click.option("--by", default="night,image_type,filter_name,exposure_time_s", show_default=True,
              help=f"Comma-separated grouping keys among {', '.join(SUMMARY_KEYS)}.")
@click.option("--products", is_flag=True,
              help="Count the products (masters, calibrated, registered, stacked) instead of the raw frames.")
@frame_filters
@output_format
@pass_app
def summary(app: AppContext, by: str, products: bool, filters: FrameFilter, fmt: str) -> None:
    """Count frames and files, and total their exposure, by night, type, filter and exposure time.

    Raw frames are counted (what the camera took), or with --products the products made from
    them; --type counts that type. 'frames' counts exposures (a duplicate exposure, e.g. a
    compressed copy with other bytes, is counted once and listed under 'duplicates'), 'files'
    the copies on disk (the same bytes at two paths are one frame and two files); 'exposure_h'
    totals the frames' exposure in hours, a stack's being its total exposure (TOTEXP).

    \b
    Examples:
      archive summary
      archive summary --by target,filter_name --type light
      archive summary --products --by target,image_type
      archive summary --night 2025-06-01 --format json
    """
    keys = [k.strip() for k in by.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SUMMARY_KEYS]
    if unknown:
        raise click.BadParameter(f"unknown key(s) {unknown}; choose from {', '.join(SUMMARY_KEYS)}", param_hint="--by")
    with session_scope(app.engine) as session:
        emit(summary_rows(session, keys, filters, level="products" if products else "raw"), fmt)


@click.command()
@click.option("--all", "include_resolved", is_flag=True, help="Also list errors a later ingest resolved.")
@click.option("--severity", type=click.Choice(["error", "warning"]), help="Only errors or only warnings.")
@click.option("--reductions", "reductions", type=click.Choice(["failed", "rejected", "all"]),
              help="List reductions that did not make their product instead: failed steps, rejected frames.")
@click.option("--quality", "quality", is_flag=True,
              help="List the frames rejected by quality instead (a rule's reject flag or a person's override).")
@output_format
@pass_app
def problems(app: AppContext, include_resolved: bool, severity: str | None, reductions: str | None, quality: bool,
             fmt: str) -> None:
    """List files that could not be ingested (error) and frames ingested with gaps (warning);
    with --reductions, the steps that failed and the frames rejected (step, frame, reason);
    with --quality, the frames rejected by quality (frame, by rules or override, reasons).

    \b
    Examples:
      archive problems
      archive problems --severity error --format csv
      archive problems --reductions rejected
      archive problems --quality
    """
    if quality and reductions:
        raise click.UsageError("give --quality or --reductions, not both")
    with session_scope(app.engine) as session:
        if quality:
            from archive.reduce.quality_report import rejected_frames

            emit(rejected_frames(session), fmt)
            return
        if reductions:
            from archive.reports.reductions import list_reduction_problems

            emit(list_reduction_problems(session, status=None if reductions == "all" else reductions), fmt)
            return
        emit(problem_rows(session, include_resolved=include_resolved, severity=severity), fmt)


@click.command()
@click.argument("name", required=False)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A query parameter (repeatable).")
@click.option("--list", "show_list", is_flag=True, help="List the named reports and their parameters.")
@output_format
@pass_app
def report(app: AppContext, name: str | None, params: tuple[str, ...], show_list: bool, fmt: str) -> None:
    """Run the named report NAME (queries/NAME.sql) with bound parameters.

    \b
    Examples:
      archive report --list
      archive report nights
      archive report integration_by_target_filter --param instrument=dcam-spare --format csv
      archive report problems --param severity=error
    """
    if show_list or not name:
        for query in load_queries().values():
            click.echo(f"{query.name}: {query.title}\n    {query.description}")
            for param, (default, help_text) in query.params.items():
                click.echo(f"    --param {param}=...  {help_text}" + (f" (default {default})" if default else ""))
        return
    with session_scope(app.engine) as session:
        emit(run_query(session, name, parse_params(params)), fmt)
