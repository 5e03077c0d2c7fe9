"""``archive watch``: keep the archive up to date during the night."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from archive.cli import AppContext, pass_app
from archive.cli.reduce import _executor, executor_options


@click.command()
@click.argument("root", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--settle", "settle_s", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="A folder's sequence is complete after this long without a new or growing file.")
@click.option("--poll", is_flag=True, help="Look for changes by polling (network shares, where no change events arrive).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Products folder.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure and judge each sequence's frames before stacking.")
@executor_options
@pass_app
def watch(app: AppContext, root: Path | None, settle_s: float, poll: bool, output: Path | None, measure: bool,
          workers, serial) -> None:
    """Watch ROOT for new FITS files and run each completed sequence through the nightly chain.

    ROOT defaults to the configured imaging root ([night] imaging_root, ARCHIVE_IMAGING_ROOT).
    A folder's sequence is complete when no file under it is new or has grown for --settle
    seconds; it is then ingested, its masters built, its lights measured, calibrated,
    registered and stacked, as 'archive night' does, and one line is printed per sequence. A
    file still being written is never ingested. A missing ROOT is waited for; unreadable
    folders and bad files are reported and left out. SIGINT (Ctrl-C) and SIGTERM stop it after
    the current step (exit status 0, with a summary line); a restart takes up whatever arrived
    while it was down, and finishes a sequence it was stopped in.

    \b
    Examples:
      archive watch /data/imaging
      archive watch /mnt/nas/imaging --poll --settle 120
      archive --db postgresql+psycopg://obs@db/archive watch --workers 2
    """
    from archive.errors import ConfigError
    from archive.reduce.config import load_reduction_config
    from archive.workflows.watch import Watcher

    config = load_reduction_config(app.settings, {
        "night": {"imaging_root": str(root) if root else None},
        "output": {"root": str(output) if output else None},
    })
    if config.imaging_root is None:
        raise ConfigError("no imaging root: give ROOT, or set [night] imaging_root or ARCHIVE_IMAGING_ROOT")
    engine = app.catalogue(create=True)
    with _executor(config, workers, serial) as executor:
        watcher = Watcher(engine, config.imaging_root, settle_s=settle_s, poll=poll, config=config,
                          settings=app.settings, executor=executor, measure=measure,
                          report=lambda line: click.echo(line))

        def on_signal(signum, _frame) -> None:
            if not watcher.stopping:
                click.echo(f"{signal.Signals(signum).name}: stopping after the current step", err=True)
            watcher.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            click.echo(f"watching {config.imaging_root} ({'polling' if poll else 'change events'}; "
                       f"settle {settle_s:g} s; products under {config.products_root()})")
            summary = watcher.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    click.echo(summary.line())
