"""``archive serve``: every page of the web view on the real ARCSAT night reduced by ``archive
night`` (both backends, through Starlette's test client), errors as 404/400 pages without a
traceback, the preview route serving only files the catalogue knows, and a real browser
(Debian's chromium, headless, through Selenium) on a uvicorn server."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from archive.db.models import Copy, Frame
from archive.db.session import session_scope
from archive.web import create_app
from tests.test_night import night  # noqa: F401 - the night reduced once per backend (module scope)

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: What an error page must never show.
TRACEBACK_TEXT = ("Traceback", 'File "', "sqlalchemy", "Exception")


def _ids(reduced, image_type: str, target_key: str | None = None) -> list[int]:
    query = select(Frame.id).where(Frame.image_type == image_type).order_by(Frame.date_obs_s, Frame.id)
    if target_key:
        query = query.where(Frame.target_key == target_key)
    with session_scope(reduced["engine"]) as session:
        return list(session.scalars(query))


def _path(reduced, frame_id: int) -> str:
    with session_scope(reduced["engine"]) as session:
        return session.scalar(select(Copy.path).where(Copy.frame_id == frame_id, Copy.is_current, Copy.is_canonical))


@pytest.fixture(scope="module")
def client(night):  # noqa: F811
    assert night["result"].exit_code == 0, night["result"].output
    with TestClient(create_app(night["engine"]), raise_server_exceptions=False) as test_client:
        yield test_client


def test_nights_and_the_night_page(client):
    nights = client.get("/nights")
    assert nights.status_code == 200 and 'href="/nights/2025-06-01"' in nights.text
    page = client.get("/nights/2025-06-01")
    assert page.status_code == 200
    text = page.text
    # the night report's sections: 16 XO1-b lights in z, all accepted; 43Bet Com's one accepted too (a sparse field)
    assert "Integration per target and filter" in text and "Quality through the night" in text
    assert ('<tr><td>XO1-b</td><td>z</td><td class="num">16</td>\n<td class="num">16</td><td class="num">0</td>'
            in text)
    assert '<tr><td>43Bet Com</td><td>z</td><td class="num">1</td>\n<td class="num">1</td><td class="num">0</td>' in text
    assert 'src="/nights/2025-06-01/quality.png"' in text and "data:image" not in text
    plot = client.get("/nights/2025-06-01/quality.png")
    assert plot.status_code == 200 and plot.content.startswith(PNG)
    thumbs = [part.split('"')[0] for part in text.split('<img src="')[1:]]
    assert thumbs and all(t.startswith("/frames/") and "preview.png?size=" in t for t in thumbs)
    assert client.get(thumbs[0]).content.startswith(PNG)
    assert text.count('href="/frames/') >= 17 + 3  # the lights and the masters, linked


def test_targets_and_a_target_page(client):
    targets = client.get("/targets")
    assert targets.status_code == 200 and 'href="/targets/XO1-b"' in targets.text
    page = client.get("/targets/XO1-b")
    assert page.status_code == 200
    assert "Integration per filter" in page.text and 'href="/nights/2025-06-01"' in page.text
    assert "0.27 h" in page.text  # 16 x 60 s
    assert client.get("/targets/xo1b").text.count("0.27 h") == page.text.count("0.27 h")  # the folded name finds the same lights


def test_frame_page_of_a_stack_shows_header_values_sources_and_provenance(client, night):  # noqa: F811
    stack = _ids(night, "stacked")[0]
    page = client.get(f"/frames/{stack}")
    assert page.status_code == 200
    text = page.text
    assert "NCOMBINE=" in text and 'id="card-NCOMBINE"' in text  # the whole header, card by card
    assert "Normalized values" in text and 'href="#card-EXPTIME"' in text  # a value beside its keyword
    assert _path(night, stack) in text  # its copy on disk
    registered = _ids(night, "registered")
    assert sum(f'href="/frames/{i}"' in text for i in registered) == 16  # provenance down, as links (not 43Bet Com)
    assert "stack (done" in text
    light = _ids(night, "light", "xo1b")[0]
    light_page = client.get(f"/frames/{light}").text
    assert f'href="/frames/{stack}"' in light_page  # provenance up: the stack made from it
    assert f'src="/frames/{light}/preview.png"' in light_page and "Quality" in light_page
    assert "Verdict: <b class=\"accepted\">accepted</b>" in light_page
    master = _ids(night, "master_bias")[0]
    assert f'href="/frames/{master}"' in light_page or "bias" in light_page


def test_preview_is_a_png_of_the_catalogued_file(client, night):  # noqa: F811
    light = _ids(night, "light", "xo1b")[0]
    response = client.get(f"/frames/{light}/preview.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG) and len(response.content) > 1000
    # a path in the request is ignored: the route serves the frame's own file or nothing
    other = client.get(f"/frames/{light}/preview.png", params={"path": "/etc/passwd"})
    assert other.content == response.content


def test_masters_queries_and_problems(client, night):  # noqa: F811
    masters = client.get("/masters")
    assert masters.status_code == 200 and "<svg" in masters.text
    for kind in ("bias", "dark", "flat"):
        assert f"<h3>{kind} " in masters.text
    assert all(f'href="/frames/{i}"' in masters.text for i in _ids(night, "master_dark"))
    reports = client.get("/queries")
    assert reports.status_code == 200
    assert all(f'href="/queries/{name}"' in reports.text for name in ("nights", "problems",
                                                                       "integration_by_target_filter"))
    form = client.get("/queries/problems")
    assert form.status_code == 200 and '<select name="severity">' in form.text and "format=csv" in form.text
    table = client.get("/queries/integration_by_target_filter", params={"instrument": ""})
    assert table.status_code == 200 and "XO1-b" in table.text
    as_csv = client.get("/queries/nights", params={"format": "csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["night"] for r in rows] == ["2025-06-01"] and int(rows[0]["light"]) == 17
    as_json = client.get("/queries/integration_by_target_filter", params={"format": "json"})
    assert as_json.status_code == 200
    by_target = {(r["target"], r["filter_name"]): r for r in json.loads(as_json.text)}
    assert by_target[("XO1-b", "z")]["frames"] == 16
    problems = client.get("/problems")
    assert problems.status_code == 200
    for heading in ("Ingest problems", "Failures", "Rejections", "Rejected by quality"):
        assert heading in problems.text


def test_frames_rejected_by_quality_are_listed_on_the_problems_page_and_by_the_cli(client, night):  # noqa: F811
    from sqlalchemy import delete

    from archive.cli import main
    from archive.db.models import QualityOverride
    from archive.reduce.quality import set_override, verdicts
    from archive.reduce.quality_report import rejected_frames

    light = _ids(night, "light", "xo1b")[3]
    with session_scope(night["engine"]) as session:
        before = set(rejected_frames(session)["frame_id"])
        by_rules = {i for i, v in verdicts(session, _ids(night, "light")).items() if v["verdict"] == "rejected"}
    assert before == by_rules  # the list is the verdicts' rejections, no more, no fewer
    assert light not in before
    with session_scope(night["engine"], write=True) as session:
        set_override(session, [light], "reject", "clouds over the field (test)", user="tester")
    try:
        page = client.get("/problems")
        assert page.status_code == 200 and "Rejected by quality" in page.text
        assert f'href="/frames/{light}"' in page.text and "clouds over the field (test)" in page.text
        listed = night["runner"].invoke(main, ["-q", "--db", night["url"], "problems", "--quality", "--format", "json"],
                                        env=night["env"], catch_exceptions=False)
        assert listed.exit_code == 0, listed.output
        rows = {r["frame_id"]: r for r in json.loads(listed.output)}
        assert set(rows) == before | {light}
        assert rows[light]["by"] == "override" and "clouds over the field (test)" in rows[light]["reasons"]
    finally:
        with session_scope(night["engine"], write=True) as session:
            session.execute(delete(QualityOverride).where(QualityOverride.frame_id == light))
    assert f'href="/frames/{light}"' not in client.get("/problems").text.split("Rejected by quality")[1]


@pytest.mark.parametrize(("path", "status"), [
    ("/nowhere", 404),
    ("/nights/2024-01-01", 404),
    ("/nights/yesterday", 400),
    ("/targets/no%20such%20target", 404),
    ("/frames/99999999", 404),
    ("/frames/99999999/preview.png", 404),
    ("/frames/1/preview.png?size=99999", 400),
    ("/nights/2024-01-01/quality.png", 404),
    ("/frames/abc", 404),
    ("/frames/..%2F..%2Fetc%2Fpasswd", 404),
    ("/queries/no_such_report", 404),
    ("/queries/nights?bogus=1", 400),
    ("/queries/problems?severity=fatal", 400),
    ("/queries/nights?format=xml", 400),
])
def test_bad_requests_get_an_error_page_without_traceback(client, path, status):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert f"Error {status}" in response.text
    assert not any(marker in response.text for marker in TRACEBACK_TEXT), response.text
    assert client.post("/nights").status_code == 405  # read-only: no other method


def test_preview_refuses_a_file_the_catalogue_no_longer_has(client, night):  # noqa: F811
    """The file of a frame moved away: no preview (404), even though the file exists elsewhere."""
    flat = _ids(night, "flat")[0]
    path = Path(_path(night, flat))
    moved = path.with_name(path.name + ".moved")
    shutil.move(path, moved)
    try:
        response = client.get(f"/frames/{flat}/preview.png")
        assert response.status_code == 404 and not response.content.startswith(PNG)
        assert client.get(f"/frames/{flat}").status_code == 200  # the page itself still shows
    finally:
        shutil.move(moved, path)


def test_whole_catalogue_pages_follow_a_new_ingest(client, night, tmp_path):  # noqa: F811
    """The nights, the targets and the reports are cached until the catalogue gains rows: a
    light of another night ingested after a first look appears on the next."""
    from click.testing import CliRunner

    from archive.cli import main
    from tests.factories import nina_header, write_fits

    before = client.get("/nights").text
    assert "2026-11-20" not in before
    light = write_fits(tmp_path / "new" / "m31.fits", nina_header("LIGHT"), seed=3)
    result = CliRunner().invoke(main, ["-q", "--db", night["url"], "ingest", str(light.parent)], env=night["env"])
    assert result.exit_code == 0, result.output
    assert 'href="/nights/2026-11-20"' in client.get("/nights").text
    assert 'href="/targets/M%2031"' in client.get("/targets").text
    csv_rows = list(csv.DictReader(io.StringIO(client.get("/queries/nights", params={"format": "csv"}).text)))
    assert [r["night"] for r in csv_rows] == ["2025-06-01", "2026-11-20"]


def test_cached_pages_follow_a_change_made_in_place(client, night):  # noqa: F811
    """A master marked bad changes no row count: the cached night page shows it all the same,
    and shows it good again after the undo."""
    from click.testing import CliRunner

    from archive.cli import main

    def bad_cells() -> int:
        page = client.get("/nights/2025-06-01")
        assert page.status_code == 200
        return page.text.count("<td>yes</td>")

    before = bad_cells()
    master = _ids(night, "master_bias")[0]
    for args, expected in ((["--reason", "test"], before + 1), (["--undo"], before)):
        result = CliRunner().invoke(main, ["-q", "--db", night["url"], "masters", "mark-bad", str(master), *args],
                                    env=night["env"])
        assert result.exit_code == 0, result.output
        assert bad_cells() == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_archive_serve_listens_on_localhost_by_default(night):  # noqa: F811
    """The installed command: ``archive serve`` answers on 127.0.0.1 (and only there) until stopped."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "archive.cli", "--db", night["url"], "serve", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **night["env"]})
    try:
        body = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/nights", timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                time.sleep(0.2)
        assert body is not None and 'href="/nights/2025-06-01"' in body
        outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        outside.connect(("192.0.2.1", 9))  # a documentation address: which interface would route out
        address = outside.getsockname()[0]
        outside.close()
        if not address.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert f"http://127.0.0.1:{port}/" in process.stdout.read()


def test_a_real_browser_sees_the_night_and_a_frame(night, tmp_path):  # noqa: F811
    """Debian's chromium, headless, on a uvicorn server: the night page's counts, a frame's header,
    no console error, and a screenshot. A missing chromium fails the test (never a skip)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "chromium and chromium-driver are needed: apt-get install chromium chromium-driver"
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(night["engine"]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        assert server.started, "uvicorn did not start"
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        base = f"http://127.0.0.1:{port}"
        driver.get(f"{base}/nights/2025-06-01")
        assert driver.title.startswith("Night 2025-06-01")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "XO1-b" in body and "Integration per target and filter" in body
        assert "XO1-b z 16 16 0" in body
        light = _ids(night, "light", "xo1b")[0]
        driver.get(f"{base}/frames/{light}")
        header = driver.find_element(By.ID, "header").text
        assert "EXPTIME =" in header and "DATE-OBS=" in header
        image = driver.find_element(By.CSS_SELECTOR, "img.preview")
        for _ in range(100):  # the preview is made on the first request
            if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image):
                break
            time.sleep(0.1)
        assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
        shot = tmp_path / "frame.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000 and shot.read_bytes().startswith(PNG)
    finally:
        if driver is not None:
            driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


def test_the_server_freezes_what_it_started_with(night):  # noqa: F811
    import gc

    from archive.web.app import GC_YOUNG_THRESHOLD

    threshold = gc.get_threshold()
    with TestClient(create_app(night["engine"])) as test_client:
        # start-up (the lifespan) moved the modules' objects out of the collector's way
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert test_client.get("/nights").status_code == 200
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold  # and shut-down put it back
