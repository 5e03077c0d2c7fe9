"""``archive night SEARCH``: a date in any configured format finds folders named in any of them."""

from __future__ import annotations

from archive.workflows.night import night_searches
from tests.test_opening import run

FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y_%m_%d")


def test_a_date_in_one_format_is_searched_in_all():
    assert night_searches("20250601", FORMATS) == ["20250601", "2025-06-01", "2025_06_01"]
    assert night_searches("2025_06_01", FORMATS) == ["2025_06_01", "2025-06-01", "20250601"]
    assert night_searches("M31", FORMATS) == ["M31"]
    assert night_searches("2025-06", FORMATS) == ["2025-06"]


def test_night_20250601_finds_the_folder_2025_06_01(db_url, tmp_path):
    root = tmp_path / "imaging"
    for name in ("2025-06-01/lights", "Calibration/20250601", "2025-06-02"):
        (root / name).mkdir(parents=True)
    result = run("night", "20250601", "--root", root, "--dry-run", db=db_url)
    assert result.exit_code == 0, result.output
    found = sorted(line.split(":")[0] for line in result.output.splitlines() if "would ingest" in line)
    assert found == [str(root / "2025-06-01"), str(root / "Calibration" / "20250601")]
