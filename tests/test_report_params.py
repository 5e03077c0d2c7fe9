"""Report parameters are declared (kind, choices, required) in the query file and checked
before the query runs (issue 13)."""

from __future__ import annotations


import pytest

from archive.db import session_scope
from archive.errors import QueryError
from archive.reports import load_queries, run_query
from tests.test_opening import one_error_line, run


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "typed.sql").write_text(
        "-- title: Typed\n-- description: every kind\n"
        "-- param: since (date, required) | first night\n"
        "-- param: limit (integer) = 5 | rows at most\n"
        "-- param: scale (number) | a factor\n"
        "-- param: severity (error, warning) | one of two\n"
        "SELECT :since AS since, :limit AS n, CAST(:scale AS FLOAT) AS scale,"
        " CAST(:severity AS VARCHAR(10)) AS severity\n"
    )
    return tmp_path


def test_values_are_bound_as_their_declared_kind(engine, folder):
    with session_scope(engine) as session:
        rows = run_query(session, "typed", {"since": "2025-06-01", "scale": "1.5", "severity": "error"}, folder)
    row = rows.iloc[0]
    assert str(row["since"])[:10] == "2025-06-01" and int(row["n"]) == 5 and float(row["scale"]) == 1.5
    assert row["severity"] == "error"


@pytest.mark.parametrize("params, named", [
    ({}, "since"),
    ({"since": "June"}, "since"),
    ({"since": "2025-06-01", "limit": "five"}, "limit"),
    ({"since": "2025-06-01", "scale": "big"}, "scale"),
    ({"since": "2025-06-01", "severity": "bogus"}, "severity"),
    ({"since": "2025-06-01", "colour": "red"}, "colour"),
])
def test_a_bad_parameter_is_one_line_naming_it(engine, folder, params, named):
    with session_scope(engine) as session, pytest.raises(QueryError) as error:
        run_query(session, "typed", params, folder)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_a_declaration_mixing_a_kind_and_choices_or_a_bad_default_is_refused(tmp_path):
    (tmp_path / "mixed.sql").write_text("-- title: Mixed\n-- param: x (integer, a, b) | ?\nSELECT 1\n")
    with pytest.raises(QueryError, match="'x'"):
        load_queries(tmp_path)
    (tmp_path / "mixed.sql").write_text("-- title: Mixed\n-- param: x (integer) = many | ?\nSELECT 1\n")
    with pytest.raises(QueryError, match="x='many'"):
        load_queries(tmp_path)


def test_the_bundled_reports_declare_their_choices(db_url):
    assert load_queries()["problems"].specs["severity"].choices == ("error", "warning")
    one_error_line(run("report", "problems", "--param", "severity=bogus", db=db_url), "severity", "bogus")
    ok = run("report", "problems", "--param", "severity=warning", "--format", "json", db=db_url)
    assert ok.exit_code == 0 and ok.output.strip() == "[]"
