"""``archive copyback`` and ``archive project``: gathering frames out of the catalogue."""

from __future__ import annotations

import sys

import click

from archive.cli import AppContext, pass_app
from archive.cli.options import BarProgress, emit, output_format
from archive.gather.copyback import KINDS, MODES, Selection, copyback as run_copyback, load_gather_config


def _echo_summary(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.command()
@click.option("--target", help="Target (OBJECT), matched loosely: 'M 31' = 'M31' = 'm31'; also the folder name.")
@click.option("--filter", "filter_name", help="Only this filter (case-insensitive).")
@click.option("--since", type=click.DateTime(), help="DATE-OBS on or after (UTC).")
@click.option("--until", type=click.DateTime(), help="DATE-OBS before (UTC).")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="raw", show_default=True,
              help="Raw lights, or calibrated lights made by reduction.")
@click.option("--type", "image_type", help="Any image type instead of --kind (e.g. flat).")
@click.option("--instrument", help="Instrument name (INSTRUME), exact.")
@click.option("--ra", type=float, help="Reference RA (deg): frames within the radius are selected too.")
@click.option("--dec", type=float, help="Reference Dec (deg), with --ra.")
@click.option("--radius", type=float, help="Position-match radius (arcmin; default configs/copyback.toml; 0: off).")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), help="Destination folder.")
@click.option("--copy", "mode", flag_value="copy", default=True, help="Copy the files (default).")
@click.option("--link", "mode", flag_value="link", help="Make symbolic links to the catalogued files.")
@click.option("--move", "mode", flag_value="move",
              help="Copy, then delete each source once its verified copy is recorded.")
@click.option("--dry-run", is_flag=True, help="Only list what would be copied.")
@pass_app
def copyback(app: AppContext, target, filter_name, since, until, kind, image_type, instrument, ra, dec, radius,
             dest, mode, dry_run) -> None:
    """Copy a target's frames from every night into DIR, once per exposure.

    Frames of one instrument with the same DATE-OBS are one exposure: only the original is
    copied (its canonical file); an exposure already in DIR is not copied again, so a re-run
    does nothing. Names come from configs/copyback.toml; existing files are never overwritten.
    Every file is verified (SHA-256) and recorded in the catalogue as a new copy.

    \b
    Examples:
      archive copyback --target "M 31" --filter Ha --to ~/stack/m31 --dry-run
      archive copyback --target M31 --since 2026-09-01 --to ~/stack/m31
      archive copyback --target NGC7000 --kind calibrated --to ~/stack/ngc7000 --link
      archive copyback --ra 10.6847 --dec 41.2687 --radius 15 --to ~/stack/field
    """
    if not (target or image_type or ra is not None):
        raise click.UsageError("say what to gather: --target, --ra/--dec or --type")
    if (ra is None) != (dec is None):
        raise click.UsageError("give --ra and --dec together")
    selection = Selection(target=target, filter_name=filter_name, since=since, until=until, kind=kind,
                          image_type=image_type, instrument=instrument, ra_deg=ra, dec_deg=dec, radius_arcmin=radius)
    config = load_gather_config(app.settings)
    summary = run_copyback(app.engine, selection, dest, mode=mode, dry_run=dry_run, config=config,
                           settings=app.settings, progress=BarProgress(not app.quiet))
    if dry_run:
        for item in summary.plan:
            click.echo(f"{item.source} -> {item.dest}" if item.action == "copy" else f"delete {item.source} (moved to {item.dest})")
    _echo_summary(summary.lines())
    if not summary.ok:
        sys.exit(1)


@click.group()
def project() -> None:
    """Multi-night projects: a target, its filters and goals, gathered in dss-automation's layout.

    \b
    Examples:
      archive project create m31 --target "M 31" --filters L,R,G,B,Ha --goal Ha=10h --dir ~/projects/m31
      archive project collect m31
      archive project status m31
    """
