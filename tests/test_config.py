"""Configuration layers: package defaults < user file < environment < command line."""

from __future__ import annotations

import pytest

from archive.config import load_settings
from archive.errors import ConfigError


def test_layers_in_order(tmp_path, monkeypatch):
    defaults = load_settings()
    assert defaults.batch_size == 1000 and defaults.workers == 0
    user = tmp_path / "config.toml"
    user.write_text('[ingest]\nbatch_size = 50\nworkers = 3\n[sites]\n"ZWO ASI2600MM Pro" = 8.54\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    layered = load_settings()
    assert (layered.batch_size, layered.workers, layered.sites) == (50, 3, {"ZWO ASI2600MM Pro": 8.54})
    monkeypatch.setenv("ARCHIVE_BATCH_SIZE", "70")
    assert load_settings().batch_size == 70
    assert load_settings({"ingest": {"batch_size": 90, "workers": None}}).batch_size == 90
    assert load_settings({"ingest": {"workers": None}}).workers == 3


def test_invalid_user_file_is_a_config_error(tmp_path, monkeypatch):
    user = tmp_path / "config.toml"
    user.write_text("[ingest\nbatch_size = ")
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    with pytest.raises(ConfigError, match="config.toml: invalid TOML"):
        load_settings()
    user.write_text('[ingest]\nbatch_size = "many"\n')
    with pytest.raises(ConfigError, match="invalid configuration value"):
        load_settings()


def test_configured_site_sets_the_night(tmp_path, monkeypatch):
    import datetime as dt

    from archive.ingest.dialects import DialectSet
    from archive.ingest.headers import read_fits
    from tests.factories import nina_header, write_fits

    header = nina_header(**{"DATE-OBS": "2026-11-21T05:00:00"})
    del header["SITELONG"]
    path = write_fits(tmp_path / "f.fits", header)
    plain = read_fits(str(path), DialectSet())
    assert plain.normalized.values["night"] == dt.date(2026, 11, 20)  # UTC 05:00 - 12 h
    west = read_fits(str(path), DialectSet(), sites={"ZWO ASI2600MM Pro": -120.0})
    assert west.normalized.values["night"] == dt.date(2026, 11, 20)
    east = read_fits(str(path), DialectSet(), sites={"ZWO ASI2600MM Pro": 150.0})  # 15:00 local
    assert east.normalized.values["night"] == dt.date(2026, 11, 21)
    assert east.normalized.sources["site_longitude_deg"] == "configured site of the instrument"


def test_the_documented_night_section_sets_the_imaging_root(tmp_path, monkeypatch):
    from archive.reduce.config import load_reduction_config
    from archive.workflows.night import run_night

    user = tmp_path / "config.toml"
    user.write_text(f'[night]\nimaging_root = "{tmp_path / "imaging"}"\n[stack]\nmethod = "sigma_clip"\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    config = load_reduction_config()
    assert config.imaging_root == tmp_path / "imaging" and config.stack["method"] == "sigma_clip"
    user.write_text(f'[reduction.night]\nimaging_root = "{tmp_path / "old"}"\n')  # the older form still works
    assert load_reduction_config().imaging_root == tmp_path / "old"
    monkeypatch.delenv("ARCHIVE_CONFIG")
    with pytest.raises(ConfigError) as missing:
        run_night(None, "2025-06-01", config=load_reduction_config())
    assert "[night] imaging_root" in str(missing.value)  # the message names the form that works


def test_unknown_keys_in_the_user_file_are_warned_of(tmp_path, monkeypatch, caplog):
    user = tmp_path / "config.toml"
    user.write_text('[ingest]\nworkres = 2\nbatch_size = 10\n[nigth]\nimaging_root = "/x"\n'
                    '[sites]\n"Any camera" = 8.5\n[masters]\nlibrary = "/m"\n[reduction.stack]\nmethod = "median"\n'
                    '[sky.footprint]\nimage_types = []\n[sky.solve]\nin_nigth = false\n'
                    '[quality.instruments."My camera".limits]\nfwhm_arcsec = {max = 4.0}\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    with caplog.at_level("WARNING", logger="archive.config"):
        settings = load_settings()
    assert settings.batch_size == 10
    warned = sorted(r.getMessage() for r in caplog.records)
    assert warned == [f"{user}: unknown configuration key 'ingest.workres' (ignored)",
                      f"{user}: unknown configuration key 'nigth' (ignored)",
                      f"{user}: unknown configuration key 'sky.solve.in_nigth' (ignored)"]


def test_archive_config_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVE_CONFIG", str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match="nowhere.toml"):
        load_settings()


@pytest.mark.parametrize("text, named", [
    ('[ingest]\nworkers = "two"\n', "[ingest] workers = 'two'"),
    ('[ingest]\nbatch_size = 1.5\n', "[ingest] batch_size = 1.5"),
    ('[database]\nsqlite_busy_timeout_s = "soon"\n', "[database] sqlite_busy_timeout_s = 'soon'"),
    ('[sites]\n"cam" = "east"\n', "[sites] cam = 'east'"),
])
def test_a_value_of_the_wrong_kind_names_its_key(tmp_path, monkeypatch, text, named):
    user = tmp_path / "config.toml"
    user.write_text(text)
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert named in str(error.value)


def test_a_wrong_executor_worker_count_names_its_key(tmp_path, monkeypatch):
    from archive.reduce.config import load_reduction_config

    user = tmp_path / "config.toml"
    user.write_text('[executor]\nworkers = "two"\n')
    monkeypatch.setenv("ARCHIVE_CONFIG", str(user))
    with pytest.raises(ConfigError, match=r"\[executor\] workers = 'two'"):
        load_reduction_config()


def test_night_and_reduce_share_one_products_root(tmp_path, monkeypatch):
    from archive.config import data_home
    from archive.reduce.config import load_reduction_config

    plain = load_reduction_config()
    with_root = load_reduction_config(overrides={"night": {"imaging_root": str(tmp_path / "imaging")}})
    assert plain.products_root() == with_root.products_root() == data_home() / "products"
    monkeypatch.setenv("ARCHIVE_PRODUCTS", str(tmp_path / "products"))
    assert load_reduction_config().products_root() == tmp_path / "products"
