"""``archive measure`` and ``archive quality``: frame quality as data."""

from __future__ import annotations

import sys

import click

from archive.cli import AppContext, pass_app
from archive.cli.catalog import frame_filters
from archive.cli.options import BarProgress, emit, output_format
from archive.db.frames import FrameFilter
from archive.db.session import session_scope


def print_measure_summary(summary) -> None:
    """One line of counts, then the frames that could not be measured (stderr)."""
    click.echo(f"measured: {summary.measured}, already measured: {summary.unchanged}, failed: {len(summary.failed)}, "
               f"flagged: {summary.flagged}, rejected: {summary.rejected}")
    for what, why in summary.failed:
        click.echo(f"  FAILED {what}: {why}", err=True)


@click.command()
@frame_filters
@click.option("--force", is_flag=True, help="Measure again frames already measured under this version.")
@click.option("--rules", "rules_path", type=click.Path(exists=True, dir_okay=False),
              help="A quality rules file instead of the bundled configs/quality/default.toml.")
@click.option("--workers", type=int, metavar="N", help="Processes (default [executor] workers; 0: one per core).")
@click.option("--serial", is_flag=True, help="Measure in this process (no pool).")
@pass_app
def measure(app: AppContext, filters: FrameFilter, force: bool, rules_path: str | None, workers, serial) -> None:
    """Measure the quality of frames (lights, calibrations, masters) and judge them by the rules.

    Lights are measured on their calibrated frame when there is one, else on the raw frame:
    background and noise, stars, FWHM, eccentricity, saturation, a signal weight and the star
    list; calibrations get their level, read noise, dark current, hot pixels, flat SNR and
    falloff, masters a comparison with the previous master. Each frame is measured once per
    measurement version ([measure] version of configs/quality), again with --force.
    Exit status 1 when a frame could not be read.

    \b
    Examples:
      archive measure --night 2025-06-01
      archive measure --type light --target "XO-1 b" --force
      archive measure --type master_bias
    """
    from archive.reduce.config import load_reduction_config
    from archive.reduce.executor import make_executor
    from archive.reduce.measure import WORKER_MODULES

    config = load_reduction_config(app.settings)
    kind = "serial" if serial else config.executor.get("kind", "process")
    # the workers start (and import what measuring needs) while the catalogue is read
    with make_executor(kind, workers if workers is not None else int(config.executor.get("workers", 0)),
                       preload=WORKER_MODULES) as executor:
        from archive.calib.quality import load_quality_rules
        from archive.reduce.quality_measure import frame_ids_matching, measure_frames

        rules = load_quality_rules(rules_path, settings=app.settings)
        with session_scope(app.engine) as session:
            ids = frame_ids_matching(session, filters)
        if not ids:
            click.echo("no frames to measure", err=True)
            return
        summary = measure_frames(app.engine, ids, rules=rules, executor=executor, force=force,
                                 progress=BarProgress(not app.quiet))
    print_measure_summary(summary)
    if summary.failed:
        sys.exit(1)


class _QualityGroup(click.Group):
    """``archive quality [filters]`` lists; ``archive quality accept|reject`` overrides."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if (args and args[0] in self.commands) or args in (["--help"], ["-h"]):
            return super().parse_args(ctx, args)
        # no sub-command: every argument is an option of the listing
        return super().parse_args(ctx, ["list", *args])


@click.group(cls=_QualityGroup)
def quality() -> None:
    """Frame quality: list measurements, flags and verdicts; accept or reject frames.

    'archive quality [frame filters]' lists (rejected frames first, with their reasons);
    'archive quality accept|reject FRAME... --reason TEXT' overrides the rules.

    \b
    Examples:
      archive quality --night 2025-06-01 --type light
      archive quality --target M13 --format csv > m13_quality.csv
      archive quality reject 1042 1043 --reason "satellite trail"
      archive quality accept 977 --reason "thin cirrus, still usable"
    """


@quality.command("list")
@frame_filters
@click.option("--rejected", "only", flag_value="rejected", help="Only rejected frames.")
@click.option("--accepted", "only", flag_value="accepted", help="Only accepted frames.")
@output_format
@pass_app
def list_quality(app: AppContext, filters: FrameFilter, only: str | None, fmt: str) -> None:
    """List measurements, flags and verdicts (rejected frames first, with their reasons).

    \b
    Examples:
      archive quality list --type light --rejected
    """
    from archive.reduce.quality_report import quality_table

    with session_scope(app.engine) as session:
        table = quality_table(session, filters)
    if only:
        table = table[table["verdict"] == only]
    emit(table, fmt)


def _override(app: AppContext, frames: tuple[int, ...], verdict: str, reason: str) -> None:
    from archive.reduce.quality import set_override

    with session_scope(app.engine, write=True) as session:
        set_override(session, list(frames), verdict, reason)
    click.echo(f"{verdict}ed {len(frames)} frame(s): {reason}")


@quality.command()
@click.argument("frames", nargs=-1, required=True, type=int)
@click.option("--reason", required=True, help="Why (kept with the override).")
@pass_app
def accept(app: AppContext, frames: tuple[int, ...], reason: str) -> None:
    """Accept FRAMES (frame ids) whatever the rules say; stacks they touch become stale.

    \b
    Example:
      archive quality accept 977 --reason "thin cirrus, still usable"
    """
    _override(app, frames, "accept", reason)


@quality.command()
@click.argument("frames", nargs=-1, required=True, type=int)
@click.option("--reason", required=True, help="Why (kept with the override).")
@pass_app
def reject(app: AppContext, frames: tuple[int, ...], reason: str) -> None:
    """Reject FRAMES (frame ids): left out of stacks and usable integration; stacks become stale.

    \b
    Example:
      archive quality reject 1042 1043 --reason "satellite trail"
    """
    _override(app, frames, "reject", reason)
