"""The night report as one self-contained HTML file (``archive night-report``, issue 12).

Rendered with Jinja2 from the templates shipped in the package (``archive/templates/``):
``night.html.j2`` is the page, ``night_sections.html.j2`` holds one macro per section (what
came in, calibration, quality, integration, thumbnails, problems) and ``night_style.css.j2``
the styles, so that the web view shows the same sections inside its own pages. Everything is
inline: the CSS, the plots (PNG drawn with matplotlib's Agg canvas) and the thumbnails (PNG),
as base64 ``data:`` URIs. The file opens from disk or as an e-mail attachment with no network;
it names no other site.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archive.files import temporary_path
from archive.reports.night import QUALITY_METRICS, NightReport

if TYPE_CHECKING:
    import jinja2

#: The folder of the report's templates (package data).
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

#: Axis labels of the quality plot, per metric of :data:`archive.reports.night.QUALITY_METRICS`.
METRIC_LABELS = {
    "fwhm_px": "FWHM [px]",
    "background_adu": "background [ADU]",
    "n_stars": "stars",
    "eccentricity": "eccentricity",
}


def _missing(value: Any) -> bool:
    """None, NaN, NaT or pandas.NA."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    if isinstance(value, (str, int)):  # the common cells, without pandas (a night has 20,000 of them)
        return False
    import pandas as pd

    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return missing if isinstance(missing, bool) else False


def cell(value: Any, kind: str = "") -> str:
    """A table value as text: blank for NULL, numbers rounded to their meaning.

    Parameters
    ----------
    value : any
    kind : str
        ``h`` (hours, 0.01), ``s`` (seconds, 0.01, trailing zeros dropped), ``1``, ``2``, ``3``
        (decimals), ``int``, ``time`` (a UTC datetime as HH:MM:SS), ``date``; else ``str``.
    """
    if _missing(value):
        return ""
    if kind == "time" and hasattr(value, "strftime"):
        return value.strftime("%H:%M:%S")
    if kind == "date" and hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) or hasattr(value, "__float__") and not isinstance(value, str):
        number = float(value)
        if kind == "int":
            return str(round(number))
        if kind == "h":
            return f"{number:.2f}"
        if kind == "s":
            return f"{number:.2f}".rstrip("0").rstrip(".")
        if kind in ("1", "2", "3"):
            return f"{number:.{kind}f}"
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return f"{number:.4g}"
    return str(value)


def records(table, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a DataFrame as dicts (for templates).

    Parameters
    ----------
    table : DataFrame or None
    columns : sequence of str, optional
        Only these columns (those of them the table has): what a template shows of a wide
        table (a night's quality has 26 columns, its page shows 10 of a thousand rows).

    Returns
    -------
    list of dict
        As ``DataFrame.to_dict("records")`` gives them (numbers as Python's).
    """
    if table is None:
        return []
    if columns is not None:
        table = table[[c for c in dict.fromkeys(columns) if c in table.columns]]
    return table.to_dict("records")


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def quality_plot_png(report: NightReport, *, width_in: float = 9.0, dpi: int = 90) -> bytes | None:
    """FWHM, background, star count and eccentricity of each light against time (UTC), one
    panel each; rejected lights are red crosses, accepted ones dots. None without a measured light.

    Drawn on matplotlib's Agg canvas (no display, no global pyplot state: safe in a server).

    Returns
    -------
    bytes or None
        A PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    table = report.quality
    if table.empty:
        return None
    table = table[table["date_obs"].notna()]
    metrics = [m for m in QUALITY_METRICS if m in table and table[m].notna().any()]
    if not metrics:
        return None
    fig = Figure(figsize=(width_in, 1.7 * len(metrics) + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    rejected = table["verdict"] == "rejected"
    for ax, metric in zip(axes, metrics):
        values = table[metric].astype(float)
        for mask, style in ((~rejected, {"marker": "o", "color": "#1f5fa8", "label": "accepted"}),
                            (rejected, {"marker": "x", "color": "#c62828", "label": "rejected", "s": 60})):
            part = table[mask]
            if len(part):
                ax.scatter(part["date_obs"], values[mask], **{"s": 18, **style})
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("time (UTC)")
    axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M"))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@functools.cache
def environment() -> jinja2.Environment:
    """A Jinja2 environment on the report's templates, autoescaping HTML, with the filters
    ``cell`` (:func:`cell`), ``records`` (:func:`records`) and ``percent`` (a share of a whole,
    0-100). Made once per process (the templates are compiled once)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(
        ["html", "j2"], default_for_string=True), undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    env.filters.update(template_filters())
    return env


def template_filters() -> dict[str, Any]:
    """The filters the night templates use, for an application's own Jinja2 environment."""
    def percent(part: Any, whole: Any) -> int:
        if _missing(part) or _missing(whole) or not float(whole):
            return 0
        return max(0, min(100, math.floor(100.0 * float(part) / float(whole) + 0.5)))

    return {"cell": cell, "records": records, "percent": percent}


def render_night_html(report: NightReport, *, generated_at: dt.datetime | None = None) -> str:
    """The night report as one self-contained HTML page (inline CSS, plots and thumbnails).

    Parameters
    ----------
    report : NightReport
        From :func:`archive.reports.night.night_summary`; an empty night gives a short page
        that says so.
    generated_at : datetime, optional
        Shown in the footer (default now, UTC).

    Returns
    -------
    str
        HTML5; no URL of another site, no script.
    """
    plot = quality_plot_png(report)
    generated_at = generated_at or dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    template = environment().get_template("night.html.j2")
    return template.render(report=report, quality_plot=_png_uri(plot) if plot else None,
                           generated_at=generated_at)


def report_path(products_root: str | Path, night: dt.date) -> Path:
    """Where ``archive night`` writes the report of ``night``, and ``archive night-report``
    by default: ``<products root>/<night>/night_report_<night>.html`` (beside the night's
    calibrated frames, ``[output] calibrated``'s ``{night}`` folder)."""
    return Path(products_root) / night.isoformat() / f"night_report_{night.isoformat()}.html"


def write_night_html(report: NightReport, path: str | Path) -> Path:
    """Write :func:`render_night_html` to ``path`` (a temporary name, then a rename; the folder
    is created) and return it.

    Raises
    ------
    OSError
        The file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        tmp.write_text(render_night_html(report), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
