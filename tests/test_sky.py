"""Where on the sky: footprints, cone and covers queries, targets across catalogues, coverage.

Real frames on both backends: the ARCSAT 2019 M13 lights carry a PinPoint WCS; the Seestar
M 94 lights carry none (estimated footprints). The expected sets come from astropy.wcs
applied to each file's own header (an independent oracle: a position is inside a frame when
its pixel coordinates fall between the corner pixels), not from the catalogue.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from click.testing import CliRunner
from sqlalchemy import func, select

from archive.cli import main
from archive.db.frames import FrameFilter, frame_query
from archive.db.models import Footprint, Frame
from archive.db.session import session_scope
from archive.db.sky import SkyQueryError, cell_ranges, footprint_geometry
from archive.ingest.ingest import ingest_paths
from tests.conftest import SHARED_DATA

M13 = SHARED_DATA / "arcsat-2019-m13-griz"
M94 = SHARED_DATA / "seestar-s50-m94"
#: M 13 and M 94 (OpenNGC, J2000, deg).
M13_POS = (250.42345833, 36.46130556)
M94_POS = (192.72108333, 41.12044444)


def _lights(folder):
    return sorted(p for p in folder.rglob("*.fit*") if "light" in str(fits.getval(p, "IMAGETYP")).lower())


def _ids_by_path(session) -> dict[str, int]:
    from archive.db.models import Copy

    return {path: fid for path, fid in session.execute(select(Copy.path, Copy.frame_id).where(Copy.is_current))}


@pytest.fixture
def sky(engine):
    ingest_paths(engine, [M13, M94])
    return engine


def _query(engine, filters) -> set[int]:
    with session_scope(engine) as session:
        return set(session.scalars(frame_query(filters, Frame.id)))


def test_lights_get_footprints_from_header_or_estimated(sky):
    with session_scope(sky) as session:
        sources = dict(session.execute(select(Footprint.source, func.count()).group_by(Footprint.source)).all())
        calibrations = session.scalar(select(func.count()).select_from(Footprint).join(Frame, Frame.id == Footprint.frame_id)
                                      .where(Frame.image_type != "light"))
    assert sources == {"header": 12, "estimated": 17}
    assert calibrations == 0


def test_ingest_follows_the_users_sky_settings(engine, tmp_path, monkeypatch):
    """``[sky.footprint] image_types`` in the user file decides which frames get a footprint at
    ingest (it was read from the bundled file only)."""
    config = tmp_path / "config.toml"
    config.write_text('[sky.footprint]\nimage_types = ["stacked"]\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(config))
    from archive.config import load_settings

    summary = ingest_paths(engine, [M13, M94], settings=load_settings())
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Frame).where(Frame.image_type == "light")) == 29
        assert session.scalar(select(func.count()).select_from(Footprint)) == 0
    assert summary.new > 29


def test_cone_around_m13_returns_its_lights_and_nothing_else(sky):
    with session_scope(sky) as session:
        paths = _ids_by_path(session)
    expected = {paths[str(p)] for p in _lights(M13)}
    assert len(expected) == 12
    assert _query(sky, FrameFilter(cone=(*M13_POS, 0.25))) == expected
    # a cone that only touches the fields' edge from outside (fields are 0.19 deg wide)
    assert _query(sky, FrameFilter(cone=(M13_POS[0], M13_POS[1] + 0.35, 0.1))) == set()
    assert _query(sky, FrameFilter(cone=(M13_POS[0], M13_POS[1] + 0.35, 0.3))) == expected
    assert _query(sky, FrameFilter(cone=(*M13_POS, 0.25), filter_name="sdss_z")) == {
        paths[str(p)] for p in _lights(M13) if "sdss_z" in p.name}


@functools.lru_cache(maxsize=64)
def _header_wcs(path) -> tuple[fits.Header, WCS]:
    header = fits.getheader(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return header, WCS(header)


def _inside(path, ra, dec) -> bool:
    header, wcs = _header_wcs(path)
    x, y = wcs.world_to_pixel_values(ra, dec)
    return bool(0 <= x <= header["NAXIS1"] - 1 and 0 <= y <= header["NAXIS2"] - 1)


def test_covers_a_position_inside_one_footprint_returns_exactly_the_frames_that_contain_it(sky):
    lights = _lights(M13)
    with session_scope(sky) as session:
        paths = _ids_by_path(session)
    # positions 3 pixels inside each corner of each frame: the dithers (about 10 pixels) put
    # some inside one footprint and outside others
    tried = 0
    for path in lights:
        header, wcs = _header_wcs(path)
        n1, n2 = header["NAXIS1"], header["NAXIS2"]
        for x, y in ((3, 3), (n1 - 4, 3), (3, n2 - 4), (n1 - 4, n2 - 4)):
            ra, dec = (float(v) for v in wcs.pixel_to_world_values(x, y))
            expected = {paths[str(p)] for p in lights if _inside(p, ra, dec)}
            if len(expected) == len(lights):
                continue
            tried += 1
            assert paths[str(path)] in expected
            assert _query(sky, FrameFilter(covers=(ra, dec))) == expected
    assert tried >= 4  # the check was not vacuous
    assert len(_query(sky, FrameFilter(covers=M13_POS))) == 12


def test_ngc_4736_selects_the_m94_frames(sky, tmp_path):
    with session_scope(sky) as session:
        paths = _ids_by_path(session)
    m94 = {paths[str(p)] for p in _lights(M94)}
    assert len(m94) == 17
    for name in ("NGC 4736", "NGC4736", "M94", "M 94", "m 094"):
        assert _query(sky, FrameFilter(target=name, image_type="light")) == m94, name
    assert _query(sky, FrameFilter(target="NGC 6205", image_type="light")) == {paths[str(p)] for p in _lights(M13)}
    # a misspelt OBJECT joins M 94 when its footprint contains M 94
    source = _lights(M94)[0]
    typo = tmp_path / "typo.fit"
    shutil.copy(source, typo)
    with fits.open(typo, mode="update") as hdul:
        hdul[0].header["OBJECT"] = "M 9 4x"
        hdul[0].header["DATE-OBS"] = "2025-04-10T21:00:00"
    ingest_paths(sky, [typo])
    with session_scope(sky) as session:
        typo_id = _ids_by_path(session)[str(typo)]
        assert session.get(Frame, typo_id).target_key == "m94x"
    assert _query(sky, FrameFilter(target="NGC 4736", image_type="light")) == m94 | {typo_id}
    assert typo_id not in _query(sky, FrameFilter(target="M 13"))


def test_position_filters_reject_impossible_values(sky):
    with pytest.raises(SkyQueryError):
        _query(sky, FrameFilter(cone=(10.0, 95.0, 1.0)))
    with pytest.raises(SkyQueryError):
        _query(sky, FrameFilter(cone=(10.0, 10.0, 120.0)))


def test_cell_ranges_shrink_for_wide_cones():
    assert len(cell_ranges(10.0, 20.0, 0.5)) <= 16
    assert len(cell_ranges(10.0, 20.0, 60.0)) <= 64
    with pytest.raises(SkyQueryError):
        footprint_geometry([(0, 0), (0, 0), (0, 0), (0, 0)])


def test_cli_cone_covers_coverage_and_imaged_at(sky, db_url, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["--db", db_url, "frames", "--cone", *map(str, M13_POS), "0.25", "--format", "json"],
                        catch_exceptions=False)
    assert out.exit_code == 0
    import json

    rows = json.loads(out.output)
    assert len(rows) == 12 and {r["target"] for r in rows} == {"M13"}
    out = runner.invoke(main, ["--db", db_url, "frames", "--covers", *map(str, M94_POS), "--format", "csv"])
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) == 1 + 17
    png = tmp_path / "coverage.png"
    out = runner.invoke(main, ["--db", db_url, "coverage", "--type", "light", "--by-filter", "-o", str(png),
                               "--format", "json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = json.loads(out.stdout)
    assert {r["filter_name"] for r in cells} == {"IRCUT", "sdss_g", "sdss_r", "sdss_i", "sdss_z"}
    # z: 80 + 3 x 160 s over every cell its frames share; IRCUT: 17 x 10 s at most in a cell
    assert max(r["integration_h"] for r in cells if r["filter_name"] == "sdss_z") == pytest.approx(560 / 3600)
    assert max(r["integration_h"] for r in cells if r["filter_name"] == "IRCUT") == pytest.approx(170 / 3600)
    out = runner.invoke(main, ["--db", db_url, "coverage", "--at", *map(str, M94_POS), "--format", "json"],
                        catch_exceptions=False)
    at = json.loads(out.stdout)
    assert [(r["filter_name"], r["frames"], r["nights"]) for r in at] == [("IRCUT", 17, 2)]
    assert at[0]["integration_h"] == pytest.approx(170 / 3600)
    out = runner.invoke(main, ["--db", db_url, "coverage", "--at", "10", "-20", "--format", "json"])
    assert json.loads(out.stdout) == []


def test_named_report_takes_cone_and_covers(sky, db_url):
    """A named report's sky parameters select the frames ``archive frames --cone/--covers``
    selects: integration_by_target_filter sums exactly their exposure times."""
    import json

    runner = CliRunner()

    def report(*params):
        out = runner.invoke(main, ["--db", db_url, "report", "integration_by_target_filter", "--format", "json",
                                   *[a for p in params for a in ("--param", p)]], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return {(r["target"], r["filter_name"]): (r["frames"], r["integration_h"]) for r in json.loads(out.stdout)}

    everything = report()
    assert {t for t, _ in everything} >= {"M13", "M 94"}
    for filters, params in (
        (FrameFilter(cone=(*M13_POS, 0.25), image_type="light"), [f"cone={M13_POS[0]},{M13_POS[1]},0.25"]),
        (FrameFilter(covers=M94_POS, image_type="light"), [f"covers={M94_POS[0]},{M94_POS[1]}"]),
    ):
        with session_scope(sky) as session:
            frames = session.execute(frame_query(filters, Frame.target, Frame.filter_name, Frame.exposure_time_s)).all()
        expected = {}
        for target, filter_name, exposure in frames:
            n, seconds = expected.get((target, filter_name), (0, 0.0))
            expected[(target, filter_name)] = (n + 1, seconds + exposure)
        got = report(*params)
        assert set(got) == set(expected) and len(got) < len(everything)
        for key, (n, seconds) in expected.items():
            assert got[key][0] == n and got[key][1] == pytest.approx(seconds / 3600)
    assert report(f"cone={M13_POS[0]},{M13_POS[1]},0.25", "instrument=nobody") == {}
    assert report("covers=10,-20") == {}
    for bad, says in (("cone=1,2", "RA,DEC,RADIUS"), ("cone=10,95,1", "not a position"), ("covers=a,b", "RA,DEC")):
        out = runner.invoke(main, ["--db", db_url, "report", "integration_by_target_filter", "--param", bad])
        assert out.exit_code != 0 and says in out.output and "Traceback" not in out.output, out.output


def test_footprints_are_backfilled_for_frames_catalogued_before(sky):
    from sqlalchemy import delete

    from archive.db.models import FootprintCell, FootprintCorner
    from archive.ingest.sky import index_missing

    with session_scope(sky, write=True) as session:
        session.execute(delete(FootprintCell))
        session.execute(delete(FootprintCorner))
        session.execute(delete(Footprint))
    assert _query(sky, FrameFilter(cone=(*M13_POS, 0.25))) == set()
    with session_scope(sky, write=True) as session:
        assert index_missing(session) == 29
    assert len(_query(sky, FrameFilter(cone=(*M13_POS, 0.25)))) == 12


# -- the same filters in projects, copyback, reports and the Python API ----------------------


def test_a_project_placed_on_the_sky_gathers_the_lights_there(sky, tmp_path):
    from archive.errors import ProjectError
    from archive.gather.projects import collect_project, create_project, project_status

    m13 = _lights(M13)
    with session_scope(sky, write=True) as session:
        create_project(session, "m13field", cone=(*M13_POS, 0.25), folder=tmp_path / "m13field")
        create_project(session, "m94spot", covers=M94_POS, folder=tmp_path / "m94spot")
        # the position is ANDed with the target: M 94 is not near M 13
        create_project(session, "m94nearm13", target="M 94", cone=(*M13_POS, 0.25), folder=tmp_path / "none")
        with pytest.raises(ProjectError, match="target, a cone"):
            create_project(session, "nowhere", folder=tmp_path / "nowhere")
        with pytest.raises(SkyQueryError):
            create_project(session, "toowide", cone=(*M13_POS, 120.0), folder=tmp_path / "toowide")
    status = project_status(sky, "m13field").set_index("filter")
    per_filter = {f: sum(1 for p in m13 if f in p.name) for f in ("sdss_g", "sdss_r", "sdss_i", "sdss_z")}
    assert status["frames"].to_dict() == per_filter == {"sdss_g": 2, "sdss_r": 3, "sdss_i": 3, "sdss_z": 4}
    assert status.loc["sdss_z", "total_h"] == pytest.approx((80 + 3 * 160) / 3600, abs=1e-3)
    planned = collect_project(sky, "m13field", dry_run=True)
    assert sorted(item.source for s in planned.lights.values() for item in s.plan) == sorted(map(str, m13))
    assert project_status(sky, "m94spot")[["filter", "frames"]].values.tolist() == [["IRCUT", 17]]
    assert project_status(sky, "m94nearm13").empty


def test_cli_project_copyback_summary_and_api_by_position(sky, db_url, tmp_path):
    import json

    from archive.reports import select_frames, summarize

    runner = CliRunner()

    def run(*args):
        out = runner.invoke(main, ["--db", db_url, *map(str, args)], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.stdout

    cone = [*M13_POS, 0.25]
    created = run("project", "create", "m13field", "--cone", *cone, "--filters", "sdss_g,sdss_z",
                  "--dir", tmp_path / "m13field")
    assert "cone 250.423 36.4613 0.25" in created
    status = json.loads(run("project", "status", "m13field", "--format", "json"))
    assert [(r["filter"], r["frames"]) for r in status] == [("sdss_g", 2), ("sdss_z", 4)]
    listed = json.loads(run("project", "list", "--format", "json"))
    assert [(r["name"], r["target"], r["sky"]) for r in listed] == [("m13field", "", "cone 250.423 36.4613 0.25")]
    bare = runner.invoke(main, ["--db", db_url, "project", "create", "bare", "--dir", str(tmp_path / "bare")])
    assert bare.exit_code != 0 and "--cone or --covers" in bare.output
    # copyback: the frames whose footprint contains M 94
    planned = run("copyback", "--covers", *M94_POS, "--to", tmp_path / "spot", "--dry-run").splitlines()
    assert sorted(line.split(" -> ")[0] for line in planned if " -> " in line) == sorted(map(str, _lights(M94)))
    # the summary report
    rows = json.loads(run("summary", "--by", "filter_name", "--cone", *cone, "--format", "json"))
    assert {r["filter_name"]: r["frames"] for r in rows} == {"sdss_g": 2, "sdss_r": 3, "sdss_i": 3, "sdss_z": 4}
    # the Python API
    with session_scope(sky) as session:
        frames = select_frames(session, FrameFilter(covers=M94_POS))
        assert sorted(frames["path"]) == sorted(map(str, _lights(M94)))
        totals = summarize(session, ["target"], FrameFilter(cone=tuple(cone), image_type="light"))
    assert totals["frames"].tolist() == [12]


def _image_header(path) -> fits.Header:
    with fits.open(path) as hdul:
        return next(hdu.header.copy() for hdu in hdul if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2)


def test_footprint_from_wcslib_alone_equals_astropy_wcs_on_every_real_header():
    """Ingest's fast path (astropy's Wcsprm, no WCS object) gives the corners and plate scale
    of astropy.wcs.WCS for every real header with a celestial WCS, and none where WCS finds none."""
    from archive.ingest.sky import celestial_wcs, frame_footprint, wcs_footprint
    from archive.ingest.sky_config import load_sky_config

    config = load_sky_config()
    compared = 0
    for path in sorted(SHARED_DATA.rglob("*.fit*")):
        header = _image_header(path)
        text = "\n".join(card.image.rstrip() for card in header.cards)
        frame = {"header": text, "naxis1": header["NAXIS1"], "naxis2": header["NAXIS2"], "image_type": "light",
                 "ra_deg": None, "dec_deg": None}  # no pointing: only a header WCS gives a footprint
        got = frame_footprint(frame, config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = celestial_wcs(header)
        if wcs is None:
            assert got is None, path
            continue
        expected = wcs_footprint(wcs, header["NAXIS1"], header["NAXIS2"])
        assert got["source"] == "header"
        assert got["corners"] == pytest.approx(expected["corners"], abs=1e-10), path
        assert got["pixel_scale_arcsec"] == pytest.approx(expected["pixel_scale_arcsec"], rel=1e-12), path
        compared += 1
    assert compared >= 30  # the ARCSAT, LCO and UW frames with a WCS


def test_footprint_of_a_sip_header_keeps_its_distortion():
    """A header with SIP distortion goes through astropy.wcs.WCS (wcslib alone would drop the
    SIP terms): its corners are WCS.calc_footprint's, not the undistorted ones."""
    from archive.ingest.sky import frame_footprint
    from archive.ingest.sky_config import load_sky_config

    header = fits.Header()
    for key, value in {"NAXIS": 2, "NAXIS1": 2000, "NAXIS2": 1500, "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP",
                       "CRPIX1": 1000.5, "CRPIX2": 750.5, "CRVAL1": 250.4, "CRVAL2": 36.46, "CD1_1": -2.8e-4,
                       "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 2.8e-4, "A_ORDER": 2, "B_ORDER": 2, "A_2_0": 2e-5,
                       "B_0_2": -3e-5}.items():
        header[key] = value
    text = "\n".join(card.image.rstrip() for card in header.cards)
    frame = {"header": text, "naxis1": 2000, "naxis2": 1500, "image_type": "light", "ra_deg": None, "dec_deg": None}
    got = frame_footprint(frame, load_sky_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        distorted = WCS(header).calc_footprint(axes=(2000, 1500))
        core = WCS(header).wcs.p2s([[1, 1], [1, 1500], [2000, 1500], [2000, 1]], 1)["world"]
    assert got["corners"] == pytest.approx(distorted, abs=1e-10)
    assert abs(got["corners"] - core).max() > 1e-3  # the SIP terms move the corners


def test_footprint_geometries_of_a_batch_are_each_footprints_geometry():
    """The batch (ingest's) gives, footprint by footprint, what one call gives: the corners
    ordered counter-clockwise whichever way they came, and None where one call refuses."""
    from archive.db.sky import footprint_geometries

    square = [(250.0, 36.0), (250.0, 36.5), (250.6, 36.5), (250.6, 36.0)]
    sets = [square, square[::-1], [(0, 0)] * 4, [(10, 95)] * 4, [(359.9, -0.2), (0.1, -0.2), (0.1, 0.2), (359.9, 0.2)]]
    batch = footprint_geometries(sets)
    assert batch[2] is None and batch[3] is None
    for corners, got in zip(sets, batch):
        if got is None:
            with pytest.raises(SkyQueryError):
                footprint_geometry(corners)
            continue
        one = footprint_geometry(corners)
        assert got.corners.tolist() == one.corners.tolist()
        assert got.normals == pytest.approx(one.normals, abs=1e-15)
        assert got.cells.tolist() == one.cells.tolist()
        assert got.radius_deg == pytest.approx(one.radius_deg, abs=1e-12)
    assert batch[0].corners.tolist() == batch[1].corners.tolist()  # both counter-clockwise
    assert batch[4].centre[0] == pytest.approx(0.0, abs=1e-9) or batch[4].centre[0] == pytest.approx(360.0, abs=1e-9)
