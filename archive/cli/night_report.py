"""``archive night-report``: one night as a self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from archive.cli import AppContext, pass_app
from archive.db.session import session_scope


@click.command("night-report")
@click.argument("night")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="The HTML file to write ('-': standard output). Default: "
                   "<products folder>/NIGHT/night_report_NIGHT.html, where 'archive night' writes it.")
@click.option("--no-thumbnails", is_flag=True, help="Leave the images out (a smaller file, made faster).")
@pass_app
def night_report(app: AppContext, night: str, output: Path | None, no_thumbnails: bool) -> None:
    """Write the report of NIGHT (YYYY-MM-DD) as one self-contained HTML file.

    NIGHT is the local observing night, named by its evening's date (the catalogue's night,
    as 'archive frames --night' takes it). The page shows what came in (by instrument, type,
    filter and exposure), the masters built and chosen and the lights missing a calibration,
    quality against time (FWHM, background, stars, eccentricity; rejected lights marked),
    integration per target and filter (accepted against total), thumbnails of the masters,
    stacks and a few lights, and the problems, failures and rejections. Styles, plots and
    images are inline: the file opens from disk or as an e-mail attachment, with no network.
    A night with no frame in the catalogue is an error (nothing is written).

    \b
    Examples:
      archive night-report 2025-06-01                     # into the products folder
      archive night-report 2025-06-01 -o ~/night.html
      archive --db postgresql+psycopg://obs@db/archive night-report 2025-06-01 -o - > night.html
    """
    from archive.calib.quality import load_quality_rules
    from archive.calib.rules import default_rulebook
    from archive.reduce.config import load_reduction_config
    from archive.reports.night import NightError, night_summary, parse_night
    from archive.reports.night_html import render_night_html, report_path, write_night_html

    date = parse_night(night)
    with session_scope(app.engine) as session:
        report = night_summary(session, date, rules=default_rulebook(app.settings),
                               quality_rules=load_quality_rules(settings=app.settings), thumbnails=not no_thumbnails)
    if report.empty:
        raise NightError(f"no frame of the night {date.isoformat()} in the catalogue "
                         "(the night is the evening's date; 'archive report nights' lists them)")
    if output is not None and str(output) == "-":
        click.echo(render_night_html(report), nl=False)
        return
    path = output or report_path(load_reduction_config(app.settings).products_root(), date)
    click.echo(str(write_night_html(report, path)))
