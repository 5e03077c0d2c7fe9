"""The ``archive`` command: a click group whose verbs each call one library function.

Only this package imports click and configures logging. Library errors meant for the user
(:class:`archive.errors.ArchiveError`) are printed as one line, with exit status 1; usage
errors exit with status 2 (click's convention).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click
from archive.config import Settings, default_database_path, load_settings
from archive.errors import ArchiveError

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass
class AppContext:
    """What every command gets: the settings and, opened on first use, the catalogue."""

    settings: Settings
    quiet: bool = False
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The catalogue engine, opened on first use; a catalogue that does not exist is an
        error (:meth:`catalogue` with ``create=True`` creates it)."""
        return self.catalogue()

    def catalogue(self, create: bool = False) -> Engine:
        """The catalogue engine, opened on first use; with ``create`` (``ingest``, ``night``)
        a missing catalogue is created at the current schema."""
        if self._engine is None:
            from archive.db.session import open_catalogue

            self._engine = open_catalogue(self.settings.database_url, busy_timeout_s=self.settings.sqlite_busy_timeout_s,
                                          create=create)
        return self._engine


pass_app = click.make_pass_decorator(AppContext)


class ArchiveGroup(click.Group):
    """A group whose commands are imported only when called (a quick start for every verb),
    and that turns :class:`ArchiveError` into one clear line and exit status 1."""

    #: command name -> "module:attribute"
    lazy_commands = {
        "db": "archive.cli.db:db",
        "ingest": "archive.cli.ingest:ingest",
        "frames": "archive.cli.catalog:frames",
        "summary": "archive.cli.catalog:summary",
        "problems": "archive.cli.catalog:problems",
        "report": "archive.cli.catalog:report",
        "copyback": "archive.cli.gather:copyback",
        "project": "archive.cli.gather:project",
        "masters": "archive.cli.masters:masters",
        "reduce": "archive.cli.reduce:reduce",
        "provenance": "archive.cli.reduce:provenance",
        "stale": "archive.cli.reduce:stale",
        "night": "archive.cli.reduce:night",
        "night-report": "archive.cli.night_report:night_report",
        "solve": "archive.cli.sky:solve",
        "coverage": "archive.cli.sky:coverage",
        "show": "archive.cli.show:show",
        "serve": "archive.cli.serve:serve",
        "measure": "archive.cli.quality:measure",
        "quality": "archive.cli.quality:quality",
        "watch": "archive.cli.watch:watch",
        "prune": "archive.cli.prune:prune",
    }

    #: command name -> the first paragraph of its help: 'archive --help' lists the commands
    #: without importing them (tests/test_cli.py checks that these match the commands' help)
    summaries = {
        "copyback": "Copy a target's frames from every night into DIR, once per exposure.",
        "coverage": "Integration per sky cell (HEALPix), as rows and, with -o, a map.",
        "db": "Manage the catalogue schema (alembic migrations).",
        "frames": "List frames, one row each, ordered by DATE-OBS.",
        "ingest": "Ingest the FITS files under PATHS (files or folders, walked recursively).",
        "masters": "Build the master bias/dark/flat library and choose masters for lights.",
        "measure": "Measure the quality of frames (lights, calibrations, masters) and judge them by the rules.",
        "night": "After a night: ingest, build masters, calibrate, register, stack, and summarize.",
        "night-report": "Write the report of NIGHT (YYYY-MM-DD) as one self-contained HTML file.",
        "problems": "List files that could not be ingested (error) and frames ingested with gaps (warning); "
                    "with --reductions, the steps that failed and the frames rejected (step, frame, reason); "
                    "with --quality, the frames rejected by quality (frame, by rules or override, reasons).",
        "project": "Multi-night projects: a target, its filters and goals, gathered in dss-automation's layout.",
        "quality": "Frame quality: list measurements, flags and verdicts; accept or reject frames.",
        "provenance": "Summarize where a product came from: its steps, raw frames by type, masters used.",
        "reduce": "Calibrate lights with their selected masters, register and stack them, with provenance.",
        "report": "Run the named report NAME (queries/NAME.sql) with bound parameters.",
        "serve": "Serve a read-only web view of the catalogue on this computer (http://127.0.0.1:8000).",
        "show": "Show everything known of one frame (FRAME is a frame id or the path of a copy).",
        "solve": "Plate-solve the lights that have no WCS, with astrometry.net's solve-field.",
        "stale": "List products whose inputs would now be chosen differently.",
        "watch": "Watch ROOT for new FITS files and run each completed sequence through the nightly chain.",
        "prune": "Delete intermediate products that can be remade from their provenance, keeping their rows.",
        "summary": "Count frames and files, and total their exposure, by night, type, filter and exposure time.",
    }

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their short help, from :attr:`summaries` where given (no import)."""
        names = self.list_commands(ctx)
        commands = [(n, click.Command(n, help=self.summaries[n]) if n in self.summaries else self.get_command(ctx, n))
                    for n in names]
        commands = [(n, c) for n, c in commands if c is not None and not c.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(n) for n, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in commands])

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attribute = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ArchiveError as exc:
            click.echo(f"archive: error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # a full disk or read-only medium anywhere: one line, no traceback
            from archive.db.session import storage_failure

            reason = storage_failure(exc)
            if reason is None:
                raise
            click.echo(f"archive: error: {reason}", err=True)
            sys.exit(1)


@click.group(cls=ArchiveGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db", "database", metavar="URL",
    help=f"Catalogue: a SQLAlchemy URL (postgresql+psycopg://user@host/db) or a SQLite file path. "
    f"Also ARCHIVE_DB. Default: {default_database_path()}",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings and errors only.")
@click.version_option(package_name="archive", prog_name="archive")
@click.pass_context
def main(ctx: click.Context, database: str | None, verbose: int, quiet: bool) -> None:
    """Catalogue astronomical FITS frames in SQLite or PostgreSQL, and report on them.

    \b
    Every morning:
      archive ingest /data/2026-11-20          # last night's frames into the catalogue
      archive summary --night 2026-11-20        # what came in
      archive problems                          # files that could not be read
    \b
    Configuration, lowest first: configs/archive.toml in the package, ~/.config/archive/config.toml
    (or ARCHIVE_CONFIG), ARCHIVE_* environment variables, then these options.
    """
    # what the command imported and made lives until the process ends: as the interpreter
    # shuts down, the cyclic collector need not scan it all once more (0.2-0.5 s of every
    # command's wall time; the objects are freed all the same when the process exits)
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    level = logging.WARNING if quiet or not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = AppContext(settings=load_settings({"database": {"url": database}}), quiet=quiet)
    ctx.call_on_close(lambda: ctx.obj._engine.dispose() if ctx.obj._engine is not None else None)

