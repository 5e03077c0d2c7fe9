"""``archive serve``: the read-only local web view of the catalogue."""

from __future__ import annotations

import click

from archive.cli import AppContext, pass_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this computer only; 0.0.0.0: every network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@pass_app
def serve(app: AppContext, host: str, port: int) -> None:
    """Serve a read-only web view of the catalogue on this computer (http://127.0.0.1:8000).

    Nights and a page per night, targets with their integration per filter (accepted against
    total), a page per frame (preview, header, normalized values and their sources, quality,
    copies, provenance), the master library, the named reports as forms with CSV and JSON
    downloads, and the problems, failures and rejections. Nothing is loaded from another
    site; Ctrl-C stops it.

    \b
    Examples:
      archive serve
      archive --db postgresql://archive@dbhost/archive serve --port 8080
      archive serve --host 0.0.0.0 --port 8000   # visible to the local network
    """
    from archive.web import serve as run

    engine = app.engine
    click.echo(f"archive: serving the catalogue on http://{host}:{port}/ (Ctrl-C stops)")
    run(engine, host, port)
