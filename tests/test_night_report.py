"""The night report (issue 12): ``night_summary`` on the real ARCSAT night reduced by ``archive
night`` (the module-scoped ``night`` fixture of tests/test_night.py, run once per backend here),
the self-contained HTML file, ``archive night-report`` and the report ``archive night`` writes.

Expected counts come from the raw files themselves (their IMAGETYP, OBJECT and FILTER cards
read with astropy), not from the catalogue.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from archive.cli import main
from archive.db.session import session_scope
from archive.reduce.preview import preview_png, stretch
from archive.reports.night import NightError, night_summary, parse_night
from archive.reports.night_html import render_night_html
from tests.test_night import NIGHT, run_arcsat_night

DATE = dt.date(2025, 6, 1)
#: Anything that would load a resource from elsewhere: a URL with a scheme, a
#: protocol-relative one, a CSS import or url().
EXTERNAL = re.compile(r"(?i)(?:https?|ftp|file):|(?:src|href|action)\s*=\s*[\"']?//|@import|url\(")
EMBEDDED = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def arcsat_night(request, tmp_path_factory):
    """The ARCSAT night run through ``archive night`` once per backend (as tests/test_night.py)."""
    yield from run_arcsat_night(request, tmp_path_factory)


def _from_files() -> dict:
    """What the raw files say: counts by image type, lights by (target, filter) with exposure."""
    types: collections.Counter = collections.Counter()
    lights: dict[tuple, list[float]] = collections.defaultdict(list)
    for path in sorted(NIGHT.glob("*.fits")):
        header = fits.getheader(path)
        kind = header["IMAGETYP"].strip().lower()
        types[kind] += 1
        if kind == "light":
            lights[(header["OBJECT"].strip(), header["FILTER"].strip())].append(float(header["EXPTIME"]))
    return {"types": dict(types), "lights": dict(lights)}


def _decodes(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_night_summary_counts_what_the_files_hold(arcsat_night):
    expected = _from_files()
    with session_scope(arcsat_night["engine"]) as session:
        report = night_summary(session, "2025-06-01")
    assert not report.empty and report.night == DATE
    assert report.totals == expected["types"]
    assert len(report.frames) == sum(expected["types"].values())
    # integration per target and filter: every light, accepted + rejected = total
    got = {(r.target, r.filter_name): r for r in report.integration.itertuples()}
    assert set(got) == set(expected["lights"])
    for key, exposures in expected["lights"].items():
        row = got[key]
        assert row.frames == len(exposures) == row.accepted + row.rejected
        assert row.exposure_h == pytest.approx(sum(exposures) / 3600.0)
        assert row.accepted_h <= row.exposure_h
    # quality: one row per light, in time order, rejected ones with a reason
    assert len(report.quality) == expected["types"]["light"]
    assert report.quality["date_obs"].is_monotonic_increasing
    rejected = report.quality[report.quality["verdict"] == "rejected"]
    assert (rejected["reasons"].str.len() > 0).all()
    assert sum(r.rejected for r in got.values()) == len(rejected)
    assert report.quality["fwhm_px"].notna().sum() > 0
    # masters: one per kind built from the night's calibrations, chosen for every light
    # (and the night's bad-pixel mask, made from its master dark and flat: issue 10)
    assert sorted(report.masters_built["kind"]) == ["badpix", "bias", "dark", "flat"]
    calibrations = report.masters_built[report.masters_built["kind"] != "badpix"]
    assert (calibrations["n_combined"] == 5).all()
    assert (report.masters_built[report.masters_built["kind"] == "badpix"]["n_combined"] == 2).all()
    chosen = report.masters_chosen.groupby("kind")["lights"].sum().to_dict()
    assert chosen == {k: expected["types"]["light"] for k in ("badpix", "bias", "dark", "flat")}
    assert set(report.masters_chosen["master_id"]) <= set(report.masters_built["frame_id"])
    assert report.missing.empty
    # the stack of XO1-b holds its 16 lights
    assert len(report.stacks) == 1 and report.stacks.loc[0, "n_combined"] == len(expected["lights"][("XO1-b", "z")])
    assert got[("XO1-b", "z")].stacked == 16
    # thumbnails: 3 masters and the bad-pixel mask, the stack, a few lights; each decodes
    kinds = collections.Counter(t.kind for t in report.thumbnails)
    assert kinds["master"] == 4 and kinds["stack"] == 1 and 1 <= kinds["light"] <= 4
    for thumb in report.thumbnails:
        assert thumb.error is None, thumb.error
        image = _decodes(thumb.png)
        assert image.mode == "L" and max(image.size) <= (640 if thumb.kind == "stack" else 320)
        assert base64.b64decode(thumb.data_uri.split(",", 1)[1]) == thumb.png


def test_an_empty_night_is_an_empty_report(arcsat_night):
    with session_scope(arcsat_night["engine"]) as session:
        report = night_summary(session, dt.date(2025, 6, 5))
    assert report.empty and report.totals == {} and report.thumbnails == []
    assert report.quality.empty and report.integration.empty and report.masters_built.empty


def test_a_night_must_be_a_date():
    assert parse_night("2025-06-01") == DATE
    with pytest.raises(NightError, match="YYYY-MM-DD"):
        parse_night("last tuesday")


def test_a_colour_cube_is_shown_in_colour(tmp_path):
    """A (3, ny, nx) cube (NAXIS3 = 3, as a colour stack is written) becomes an RGB thumbnail,
    each plane stretched on its own: a red-only scene is red."""
    rng = np.random.default_rng(1)
    cube = rng.normal(100.0, 5.0, (3, 60, 80))
    cube[0, 20:40, 30:50] += 500.0  # a red blob
    path = tmp_path / "colour.fits"
    fits.PrimaryHDU(cube.astype(np.float32)).writeto(path)
    image = _decodes(preview_png(path, max_size=40))
    assert image.mode == "RGB" and image.size == (40, 30)
    pixels = np.asarray(image).astype(int)
    blob = pixels[11:19, 16:24]  # FITS rows 20-40 binned by 2, flipped (row 0 at the bottom): 10-20
    assert (blob[..., 0] == 255).all()
    assert blob[..., 0].mean() > blob[..., 1].mean() + 30 and blob[..., 0].mean() > blob[..., 2].mean() + 30
    grey = stretch(cube[1])
    assert grey.ndim == 2 and grey.dtype == np.uint8


def _report(night: dict, *args: str):
    """``archive night-report ARGS`` on the fixture's catalogue; it ends with an exit status,
    never an exception."""
    result = night["runner"].invoke(main, ["--db", night["url"], "night-report", *args], env=night["env"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _check_page(html: str, expected: dict) -> list[Image.Image]:
    """The page names no other site, shows the counts of the files, and its images decode."""
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for kind, count in expected["types"].items():
        assert f"<li><b>{count}</b>{kind}</li>" in html
    assert f"{sum(expected['types'].values())} raw frame(s) taken that night" in html
    for (target, filter_name), exposures in expected["lights"].items():
        row = rf"<tr><td>{re.escape(target)}</td><td>{filter_name}</td><td class=\"num\">{len(exposures)}</td>"
        assert re.search(row, html), (target, filter_name)
    return [_decodes(base64.b64decode(data)) for data in EMBEDDED.findall(html)]


def test_night_report_command_writes_a_self_contained_page(arcsat_night, tmp_path):
    expected = _from_files()
    out = tmp_path / "reports" / "night.html"
    result = _report(arcsat_night, "2025-06-01", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    images = _check_page(out.read_text(encoding="utf-8"), expected)
    # the quality plot, 3 masters and the bad-pixel mask, the stack and up to 4 lights
    assert 1 + 4 + 1 + 1 <= len(images) <= 1 + 4 + 1 + 4
    assert all(min(image.size) > 16 for image in images)
    assert not list(out.parent.glob(".*"))  # no temporary file left
    # to standard output, without the images: the page and its one plot
    piped = _report(arcsat_night, "2025-06-01", "-o", "-", "--no-thumbnails")
    assert piped.exit_code == 0, piped.output
    assert len(_check_page(piped.output, expected)) == 1 and "Images left out (9 frame(s)" in piped.output  # the mask too


def test_archive_night_writes_the_report_and_prints_its_path(arcsat_night):
    output = arcsat_night["result"].output
    printed = [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("night report: ")]
    expected_path = arcsat_night["base"] / "reduced" / "2025-06-01" / "night_report_2025-06-01.html"
    assert printed == [str(expected_path)]
    images = _check_page(expected_path.read_text(encoding="utf-8"), _from_files())
    assert len(images) >= 6


def test_a_night_with_nothing_is_one_clear_line(arcsat_night, tmp_path):
    out = tmp_path / "empty.html"
    result = _report(arcsat_night, "2025-06-05", "-o", str(out))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        ("archive: error: no frame of the night 2025-06-05 in the catalogue (the night is the evening's date; "
         "'archive report nights' lists them)")]
    assert not out.exists()
    bad = _report(arcsat_night, "2025-13-40")
    assert bad.exit_code == 1 and "Traceback" not in bad.output and "YYYY-MM-DD" in bad.output
    # the data and the page of an empty night say so, without an error
    with session_scope(arcsat_night["engine"]) as session:
        html = render_night_html(night_summary(session, "2025-06-05"))
    assert "holds no frame of the night 2025-06-05" in html and not EXTERNAL.search(html)


def test_the_report_lists_the_night_s_problems_and_rejections(db_url, tmp_path):
    """A synthetic night (tests/test_reduce_pipeline.py) with a light of pure noise, which
    cannot be aligned, and a folder holding only a truncated file: the report of ``archive
    night`` lists both, and the rejected light's reason."""
    from click.testing import CliRunner

    from tests.test_reduce_pipeline import synthetic_night

    root = tmp_path / "imaging"
    synthetic_night(root / "2026-11-20" / "good")
    (root / "2026-11-20_other").mkdir(parents=True)
    (root / "2026-11-20_other" / "truncated.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    (tmp_path / "config.toml").write_text(f'[masters]\nlibrary = "{tmp_path / "masters"}"\n')
    args = ["--db", db_url, "night", "2026-11-20", "--root", str(root), "--output", str(tmp_path / "out"), "--serial"]
    result = CliRunner().invoke(main, args, env={"ARCHIVE_CONFIG": str(tmp_path / "config.toml")},
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the truncated file
    printed = [line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith("night report: ")]
    nights = sorted(p.name for p in (tmp_path / "out").glob("*/night_report_*.html"))
    assert len(printed) == len(nights) >= 1
    page = next(p for p in printed if "2026-11-2" in p)
    html = Path(page).read_text(encoding="utf-8")
    assert not EXTERNAL.search(html)
    problems = html[html.index('<section id="problems">'):]
    assert "truncated.fits" in problems and "error" in problems
    assert "register" in problems and "rejected" in problems and "too few stars" in problems
    for data in EMBEDDED.findall(html):
        _decodes(base64.b64decode(data))


def test_the_sections_take_links_and_image_urls(arcsat_night):
    """The web view includes the same macros with its own frame links and image URLs: no
    pixel is read (thumbnails=False) and no data: URI is written."""
    from archive.reports.night_html import environment

    with session_scope(arcsat_night["engine"]) as session:
        report = night_summary(session, "2025-06-01", thumbnails=False)
    assert report.thumbnails and all(t.png is None and t.error is None for t in report.thumbnails)
    page = environment().from_string(
        '{% import "night_sections.html.j2" as night %}{{ night.night_body(report, "/plot.png", thumb_src, link) }}'
    ).render(report=report, thumb_src=lambda t: f"/frames/{t.frame_id}/preview.png", link=lambda i: f"/frames/{i}")
    assert "data:" not in page and 'src="/plot.png"' in page
    for thumb in report.thumbnails:
        assert f'src="/frames/{thumb.frame_id}/preview.png"' in page
    for frame_id in report.quality["frame_id"]:
        assert f'<a href="/frames/{frame_id}">{frame_id}</a>' in page


def test_a_night_without_measurements_renders(arcsat_night):
    """Lights never measured (archive night --no-measure), one without DATE-OBS: no plot, the
    page says why, and still names no other site."""
    with session_scope(arcsat_night["engine"]) as session:
        report = night_summary(session, "2025-06-01", thumbnails=False)
    for metric in ("fwhm_px", "background_adu", "n_stars", "eccentricity"):
        report.quality[metric] = None
    report.quality.loc[0, "date_obs"] = None
    html = render_night_html(report)
    assert "No light has been measured" in html and len(EMBEDDED.findall(html)) == 0
    assert not EXTERNAL.search(html)
