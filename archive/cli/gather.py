"""``archive copyback`` and ``archive project``: gathering frames out of the catalogue."""

from __future__ import annotations

import sys

import click

from archive.cli import AppContext, pass_app
from archive.cli.catalog import cone_option, covers_option, frame_filters
from archive.cli.options import BarProgress, emit, output_format
from archive.gather.config import load_gather_config
from archive.gather.copyback import copyback as run_copyback
from archive.gather.exposures import KINDS, Selection
from archive.db.frames import FrameFilter


def _echo_summary(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.command()
@frame_filters
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="raw", show_default=True,
              help="Raw lights, or calibrated lights made by reduction (--type: any image type instead).")
@click.option("--ra", type=float, help="Reference RA (deg): frames within the radius are selected too.")
@click.option("--dec", type=float, help="Reference Dec (deg), with --ra.")
@click.option("--radius", type=float, help="Position-match radius (arcmin; default configs/copyback.toml; 0: off).")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), help="Destination folder.")
@click.option("--copy", "mode", flag_value="copy", default=True, help="Copy the files (default).")
@click.option("--link", "mode", flag_value="link", help="Make symbolic links to the catalogued files.")
@click.option("--move", "mode", flag_value="move",
              help="Copy, then delete each source once its verified copy is recorded.")
@click.option("--dry-run", is_flag=True, help="Only list what would be copied.")
@click.option("--no-wait", is_flag=True,
              help="Stop at once if another copyback is writing into DIR (default: wait for it to finish).")
@pass_app
def copyback(app: AppContext, filters: FrameFilter, kind, ra, dec, radius, dest, mode, dry_run, no_wait) -> None:
    """Copy a target's frames from every night into DIR, once per exposure.

    Frames of one instrument with the same DATE-OBS are one exposure: only the original is
    copied (its canonical file); an exposure already in DIR is not copied again, so a re-run
    does nothing. Names come from configs/copyback.toml; existing files are never overwritten.
    Every file is verified (SHA-256) and recorded in the catalogue as a new copy. One run at a
    time writes into DIR: a second one waits for the first (or stops, with --no-wait).

    The frame filters are those of 'archive frames'; --target also names the folder, and
    --type gathers any image type (e.g. flat) instead of --kind.

    \b
    Examples:
      archive copyback --target "M 31" --filter Ha --to ~/stack/m31 --dry-run
      archive copyback --target M31 --since 2026-09-01 --to ~/stack/m31
      archive copyback --target NGC7000 --kind calibrated --to ~/stack/ngc7000 --link
      archive copyback --ra 10.6847 --dec 41.2687 --radius 15 --to ~/stack/field
    """
    if not (filters.target or filters.image_type or ra is not None or filters.cone or filters.covers):
        raise click.UsageError("say what to gather: --target, --ra/--dec, --cone, --covers or --type")
    if (ra is None) != (dec is None):
        raise click.UsageError("give --ra and --dec together")
    selection = Selection(
        target=filters.target, filter_name=filters.filter_name, night=filters.night, since=filters.since,
        until=filters.until, min_exposure_s=filters.min_exposure_s, max_exposure_s=filters.max_exposure_s,
        image_type=filters.image_type, instrument=filters.instrument, kind=kind, ra_deg=ra, dec_deg=dec,
        radius_arcmin=radius, cone=filters.cone, covers=filters.covers,
    )
    config = load_gather_config(app.settings)
    summary = run_copyback(app.engine, selection, dest, mode=mode, dry_run=dry_run, config=config,
                           settings=app.settings, progress=BarProgress(not app.quiet),
                           lock_timeout_s=0 if no_wait else None)
    if not summary.frames:
        names = {"image_type": "type", "filter_name": "filter", "min_exposure_s": "min-exposure",
                 "max_exposure_s": "max-exposure"}
        given = [f"--{names.get(k, k)} {v}" for k, v in vars(filters).items()
                 if v is not None and k not in ("include_duplicates", "folder")]
        given += [f"--{k} {v}" for k, v in (("ra", ra), ("dec", dec)) if v is not None]
        click.echo(f"no frame matches {' '.join(given)}{'' if filters.image_type else f' --kind {kind}'}: "
                   f"{'would copy' if dry_run else 'copied'} 0 file(s)")
        return
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
      archive project collect m31 --super-luminance
      archive project status m31
      archive project list
    """


@project.command("create")
@click.argument("name")
@click.option("--target", help="Target (OBJECT), matched loosely and by position (optional with --cone or --covers).")
@cone_option
@covers_option
@click.option("--filters", default="", help="Comma-separated filters, e.g. L,R,G,B,Ha (default: every filter found).")
@click.option("--since", type=click.DateTime(), help="DATE-OBS on or after (UTC).")
@click.option("--until", type=click.DateTime(), help="DATE-OBS before (UTC).")
@click.option("--goal", "goals", multiple=True, metavar="FILTER=DURATION",
              help="Wanted integration per filter, e.g. Ha=10h, L=90m (repeatable).")
@click.option("--ra", type=float, help="Reference RA (deg) for position matching.")
@click.option("--dec", type=float, help="Reference Dec (deg), with --ra.")
@click.option("--radius", type=float, help="Position-match radius (arcmin; default configs/copyback.toml).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), help="The project folder (default ./NAME).")
@pass_app
def project_create(app: AppContext, name, target, cone, covers, filters, since, until, goals, ra, dec, radius,
                   folder) -> None:
    """Create the project NAME: a target and/or a place on the sky, its filters, a date range
    and goals. --cone and --covers select lights by footprint, as in 'archive frames'.

    \b
    Examples:
      archive project create m31 --target "M 31" --filters L,R,G,B,Ha --goal Ha=10h --goal L=5h
      archive project create ngc7000 --target NGC7000 --filters Ha,OIII --since 2026-09-01 --dir /data/ngc7000
      archive project create m13field --cone 250.42 36.46 0.25 --filters sdss_g,sdss_r
      archive project create sn2026abc --covers 192.72 41.12
    """
    from archive.db.session import session_scope
    from archive.gather.projects import create_project, parse_goals, sky_text

    if (ra is None) != (dec is None):
        raise click.UsageError("give --ra and --dec together")
    if not target and not cone and not covers:
        raise click.UsageError("say what the project gathers: --target, --cone or --covers")
    try:
        goal_s = parse_goals(goals)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--goal") from exc
    with session_scope(app.engine, write=True) as session:
        created = create_project(
            session, name, target=target, folder=folder or name, filters=filters.split(","), since=since, until=until,
            goals=goal_s, ra_deg=ra, dec_deg=dec, radius_arcmin=radius, cone=tuple(cone) if cone else None,
            covers=tuple(covers) if covers else None,
        )
        where = "; ".join(w for w in (f"target {created.target!r}" if created.target else "", sky_text(created)) if w)
        click.echo(f"project {created.name}: {where}, filters {','.join(created.filters) or 'all'}, "
                   f"folder {created.folder}")


@project.command("collect")
@click.argument("name")
@click.option("--super-luminance", is_flag=True,
              help="Also list every collected L, R, G, B light (super_luminance_filters) in superlum.txt.")
@click.option("--copy", "mode", flag_value="copy", default=True, help="Copy the files (default).")
@click.option("--link", "mode", flag_value="link", help="Make symbolic links instead.")
@click.option("--move", "mode", flag_value="move", help="Move the lights (masters are always copied).")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied.")
@click.option("--no-wait", is_flag=True,
              help="Stop at once if another collect is writing into the project folder (default: wait).")
@pass_app
def project_collect(app: AppContext, name, super_luminance, mode, dry_run, no_wait) -> None:
    """Copy the project's new lights and their masters into <project>/lights/<filter>/ and
    <project>/masters/<filter>/. Collecting again adds only what is new.

    \b
    Examples:
      archive project collect m31
      archive project collect m31 --super-luminance --dry-run
    """
    from archive.gather.projects import collect_project

    summary = collect_project(app.engine, name, mode=mode, dry_run=dry_run, super_luminance=super_luminance,
                              settings=app.settings, config=load_gather_config(app.settings),
                              progress=BarProgress(not app.quiet), lock_timeout_s=0 if no_wait else None)
    _echo_summary(summary.lines())
    if not summary.ok:
        sys.exit(1)


@project.command("status")
@click.argument("name")
@output_format
@pass_app
def project_status(app: AppContext, name, fmt) -> None:
    """Per filter: frames, nights, total and usable integration (h), and the gap to the goal.

    Usable lights have a valid master of every kind their instrument requires (required in
    configs/matching, as for calibration) and are not duplicate exposures.

    \b
    Examples:
      archive project status m31
      archive project status m31 --format json
    """
    from archive.calib.rules import default_rulebook
    from archive.gather.projects import project_status as status

    emit(status(app.engine, name, config=load_gather_config(app.settings), rules=default_rulebook(app.settings)), fmt)


@project.command("list")
@output_format
@pass_app
def project_list(app: AppContext, fmt) -> None:
    """List the projects.

    \b
    Example:
      archive project list
    """
    from archive.db.session import session_scope
    from archive.gather.projects import list_projects

    with session_scope(app.engine) as session:
        emit(list_projects(session), fmt)
