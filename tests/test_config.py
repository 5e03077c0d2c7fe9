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
