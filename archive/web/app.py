"""The web application: routes, error pages and the server (see :mod:`archive.web`).

Every page opens one read-only session on the catalogue and calls the library's functions
(reports, calibration library, provenance); the templates only lay out what they return.
Errors never show a traceback: an unknown page, night, target, frame or report is a 404 page,
a bad parameter a 400 page, anything else a 500 page with one line (the traceback goes to the
log).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from archive.db.frames import catalogue_state
from archive.db.provenance import ProvenanceError
from archive.db.session import session_scope
from archive.errors import ArchiveError, QueryError
from archive.web import views

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: Rows of a table shown on one page (a report's downloads have them all).
PAGE_ROWS = 500
#: Masters shown on the library page (the newest).
MASTERS_SHOWN = 200
#: Largest side (px) of a frame's preview on its page, and of a thumbnail on a night's page.
PREVIEW_SIZE = 800
THUMBNAIL_SIZE = 320
#: Whole-catalogue tables kept in memory (see :class:`_Cache`).
TABLE_CACHE = 128
#: Previews kept in memory (PNG bytes, keyed by file, size and modification time).
PREVIEW_CACHE = 64


def _fmt(value: Any, digits: int = 3) -> str:
    """A value as a page shows it: empty for NULL, numbers to ``digits`` significant places,
    times to the second."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN (pandas' missing value)
            return ""
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _cell(value: Any, link: str | None = None) -> markupsafe.Markup:
    """One table cell: the value as :func:`_fmt` shows it, escaped, numbers to the right, and a
    link to ``link`` + the value when given (the one cell renderer of the tables: a night of a
    thousand frames has twenty thousand cells)."""
    shown = _fmt(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    opening = '<td class="num">' if numeric else "<td>"
    if link and value is not None:
        href = markupsafe.escape(link + quote(shown, safe=""))
        return markupsafe.Markup(f'{opening}<a href="{href}">{markupsafe.escape(shown)}</a></td>')
    return markupsafe.Markup(f"{opening}{markupsafe.escape(shown)}</td>")


def _hours(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 3600.0:.2f} h"


def _environment() -> jinja2.Environment:
    """The web view's templates, then the night report's (its sections are the night page)."""
    from archive.reports.night_html import TEMPLATES as REPORT_TEMPLATES, template_filters

    loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(TEMPLATES)), jinja2.FileSystemLoader(str(REPORT_TEMPLATES))])
    env = jinja2.Environment(loader=loader, autoescape=True)
    env.filters.update(template_filters())
    env.filters.update(fmt=_fmt, td=_cell, hours=_hours, urlpart=lambda s: quote(str(s), safe=""))
    return env


@functools.lru_cache(maxsize=PREVIEW_CACHE)
def _preview(path: str, size: int, mtime_ns: int, hdu: int, max_size: int) -> bytes:
    from archive.reduce.preview import preview_png  # numpy, astropy, PIL: imported on use

    return preview_png(path, max_size=max_size, hdu=hdu)


#: The cyclic collector's youngest generation threshold in the server (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def _settle() -> None:
    """Import what every page uses, then put everything alive out of the cyclic collector's way.

    A full (oldest generation) collection walks every tracked object, and most of them are the
    modules' (pandas, numpy, astropy, SQLAlchemy, ...): a page that makes many objects set off
    one every request or two, some 20-35 ms each on a night's page. Frozen (:func:`gc.freeze`,
    after a collection so that no garbage is kept), they live as long as the server, as they
    would anyway, and the collections walk only what came after.

    The youngest generation's threshold goes up from 700 to :data:`GC_YOUNG_THRESHOLD`: a night's
    page keeps tens of thousands of objects alive while it is made (the ORM's lights, the rows,
    the tables) and frees them when it is sent; at 700 each was examined in the young
    generation, then in the middle one, then in full collections (together some 30 ms of a
    night's page; 8 ms at 20,000, 4 ms at 50,000: one young collection every three or four
    pages). Garbage cycles are still freed, a few pages later instead of at once.
    """
    import pandas  # noqa: F401 - the pages' tables (imported on first use by the reports)

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """The server's start-up (:func:`_settle`) and shut-down: the collector as it was (its
    thresholds; nothing frozen), for what the process does next (a test suite)."""
    threshold = gc.get_threshold()
    _settle()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class _Cache:
    """What is computed over the whole catalogue or a night (the nights, the targets, a named
    report, the problems, a night's report), kept until the catalogue changes (:func:`archive.db.frames.catalogue_state`):
    a million frames are aggregated once, not on every request. Least recently used first out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, session, key: tuple, compute: Callable[[], Any]) -> Any:
        key = (*key, catalogue_state(session))
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        value = compute()
        with self.lock:
            self.entries[key] = value
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value


def create_app(engine: Engine, *, queries_folder: Path | None = None) -> Starlette:
    """The read-only web application on the catalogue ``engine``.

    Parameters
    ----------
    engine : Engine
        An open catalogue (:func:`archive.db.session.open_catalogue`), SQLite or PostgreSQL.
    queries_folder : Path, optional
        Folder of the named reports (default the bundled ``queries/``).

    Returns
    -------
    Starlette
        GET routes only; ``debug`` off (no traceback is ever sent).
    """
    templates = Jinja2Templates(env=_environment())
    cache = _Cache(TABLE_CACHE)

    def report_table(session, name: str, given: dict[str, str]):
        """The named report's rows (a DataFrame), cached; :class:`QueryError` for a bad parameter."""
        return cache.get(session, ("report", name, tuple(sorted(given.items()))),
                         lambda: views.run_query(session, name, given, queries_folder))

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"title": "", **context}, status_code=status_code)

    def with_session(render: Callable[..., Response]) -> Callable[[Request], Response]:
        """A sync endpoint (Starlette runs it in its thread pool) with one read-only session."""

        @functools.wraps(render)
        def endpoint(request: Request) -> Response:
            with session_scope(engine) as session:
                return render(request, session)

        return endpoint

    def nights(request: Request, session) -> Response:
        columns, rows = views.table(report_table(session, "nights", {}))
        return page(request, "nights.html", title="Nights", columns=columns, rows=rows)

    def night_report(request: Request, session):
        """The night of the path (400 when it is not a date) and its report, cached."""
        text = request.path_params["night"]
        try:
            date = dt.date.fromisoformat(text)
        except ValueError:
            raise HTTPException(400, f"{text!r} is not a night (YYYY-MM-DD)") from None
        return date, cache.get(session, ("night", date), lambda: views.night(session, date))

    def night(request: Request, session) -> Response:
        date, report = night_report(request, session)
        if report.empty:
            raise HTTPException(404, f"no frame of the night {date.isoformat()} in the catalogue")
        plot = f"/nights/{date.isoformat()}/quality.png" if views.has_quality_plot(report) else None
        return page(request, "night.html", title=f"Night {date.isoformat()}", report=report, quality_plot=plot,
                    link=lambda frame_id: f"/frames/{int(frame_id)}",
                    thumb_src=lambda thumb: f"/frames/{thumb.frame_id}/preview.png?size={THUMBNAIL_SIZE}")

    def night_plot(request: Request, session) -> Response:
        date, report = night_report(request, session)
        png = cache.get(session, ("night plot", date), lambda: views.quality_plot(report)) if not report.empty else None
        if png is None:
            raise HTTPException(404, f"no measured light in the night {date.isoformat()}")
        return Response(png, media_type="image/png")

    def targets(request: Request, session) -> Response:
        columns, rows = views.table(report_table(session, "integration_by_target_filter", {}))
        return page(request, "targets.html", title="Targets", columns=columns, rows=rows)

    def target(request: Request, session) -> Response:
        name = request.path_params["name"]
        content = views.target(session, name)
        if content is None:
            raise HTTPException(404, f"no light of the target {name!r} in the catalogue")
        return page(request, "target.html", title=f"Target {name}", name=name, **content)

    def frame(request: Request, session) -> Response:
        frame_id = request.path_params["frame_id"]
        try:
            content = views.frame(session, frame_id)
        except ProvenanceError:
            raise HTTPException(404, f"no frame {frame_id} in the catalogue") from None
        return page(request, "frame.html", title=f"Frame {frame_id}", **content)

    def preview(request: Request, session) -> Response:
        frame_id = request.path_params["frame_id"]
        found = views.frame_file(session, frame_id)
        if found is None:
            raise HTTPException(404, f"no file of frame {frame_id} on disk")
        path, hdu = found
        size = request.query_params.get("size", str(PREVIEW_SIZE))
        if not size.isdigit() or not 32 <= int(size) <= 2048:
            raise HTTPException(400, f"size must be a whole number of pixels from 32 to 2048, not {size!r}")
        stat = os.stat(path)
        try:
            png = _preview(path, stat.st_size, stat.st_mtime_ns, hdu, int(size))
        except (OSError, ValueError, IndexError) as exc:
            log.warning("%s: no preview: %s", path, exc)
            raise HTTPException(404, f"frame {frame_id}: its file cannot be shown") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def masters(request: Request, session) -> Response:
        return page(request, "masters.html", title="Master library", **views.masters(session, MASTERS_SHOWN))

    def queries(request: Request, session) -> Response:
        return page(request, "queries.html", title="Reports", queries=views.load_queries(queries_folder).values())

    def query(request: Request, session) -> Response:
        name = request.path_params["name"]
        available = views.load_queries(queries_folder)
        if name not in available:
            raise HTTPException(404, f"no report named {name!r}")
        given = dict(request.query_params)
        fmt = given.pop("format", "html")
        if fmt not in ("html", "csv", "json"):
            raise HTTPException(400, f"format must be html, csv or json, not {fmt!r}")
        given = {k: v for k, v in given.items() if v != ""}  # an empty field of the form: not given
        try:
            table = report_table(session, name, given)
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        if fmt == "csv":
            return Response(table.to_csv(index=False), media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
        if fmt == "json":
            return Response(table.to_json(orient="records", date_format="iso", indent=1),
                            media_type="application/json",
                            headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
        rows = [tuple(r) for r in table.head(PAGE_ROWS).itertuples(index=False)]
        return page(request, "query.html", title=available[name].title, query=available[name], given=given,
                    columns=list(table.columns), rows=rows, total=len(table), query_string=urlencode(given))

    def problems(request: Request, session) -> Response:
        return page(request, "problems.html", title="Problems, failures and rejections",
                    **cache.get(session, ("problems",), lambda: views.problems(session, PAGE_ROWS)))

    def home(request: Request) -> Response:
        return RedirectResponse("/nights")

    def error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, exc.detail
        elif isinstance(exc, (LookupError,)) and isinstance(exc, ArchiveError):
            status, message = 404, str(exc)
        elif isinstance(exc, ArchiveError):
            status, message = 400, str(exc)
        else:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            status, message = 500, f"the page could not be made ({type(exc).__name__}); see the server's log"
        return templates.TemplateResponse(request, "error.html", {"title": f"Error {status}", "status": status,
                                                                  "message": message}, status_code=status)

    routes = [
        Route("/", home),
        Route("/nights", with_session(nights)),
        Route("/nights/{night}", with_session(night)),
        Route("/nights/{night}/quality.png", with_session(night_plot)),
        Route("/targets", with_session(targets)),
        Route("/targets/{name:path}", with_session(target)),
        Route("/frames/{frame_id:int}", with_session(frame)),
        Route("/frames/{frame_id:int}/preview.png", with_session(preview)),
        Route("/masters", with_session(masters)),
        Route("/queries", with_session(queries)),
        Route("/queries/{name}", with_session(query)),
        Route("/problems", with_session(problems)),
    ]
    return Starlette(debug=False, routes=routes, exception_handlers={HTTPException: error, Exception: error},
                     lifespan=_lifespan)


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve :func:`create_app` on ``host:port`` with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(engine), host=host, port=port, log_level="warning")
