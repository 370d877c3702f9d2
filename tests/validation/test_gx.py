"""The generic Great Expectations plumbing: suites run, Data Docs land in one rename, failures are
one line, and an empty table says so."""
import great_expectations.expectations as gxe
import pandas as pd
import pytest

from modules.core.web_assets import localize_site, network_loads
from modules.validation import (SUMMARY_FORMAT, DataValidationError, ValidationReport, raise_on_failure, run_suites,
                                schema_expectations)
from tests.offline_browser import browse


def report(outcomes, tmp_path):
    return ValidationReport(all(o.success for o in outcomes), outcomes, {}, tmp_path / "index.html", tmp_path / "s")


def test_a_suite_runs_and_publishes_its_docs(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "n": [1, 2]})
    checks = [*schema_expectations({"id": "str", "n": "int64"}, [], "table"), gxe.ExpectColumnValuesToBeUnique(column="id")]
    outcomes = run_suites({"t": (frame, checks, SUMMARY_FORMAT)}, tmp_path / "docs", suite_prefix="test")
    assert all(o.success for o in outcomes) and len(outcomes) == len(checks)
    assert (tmp_path / "docs" / "index.html").is_file()
    raise_on_failure(report(outcomes, tmp_path))


def test_an_empty_table_is_reported_as_empty(tmp_path):
    frame = pd.DataFrame({"id": pd.Series([], dtype="str"), "n": pd.Series([], dtype="int64")})
    outcomes = run_suites({"val": (frame, schema_expectations({"id": "str", "n": "int64"}, [], "split"),
                                   SUMMARY_FORMAT)}, tmp_path / "docs", suite_prefix="test")
    with pytest.raises(DataValidationError, match=r"^data validation failed: split 'val' is empty \(0 rows\)$"):
        raise_on_failure(report(outcomes, tmp_path))


def test_a_violation_is_one_line_naming_split_and_expectation(tmp_path):
    frame = pd.DataFrame({"id": ["a", "a"]})
    outcomes = run_suites({"train": (frame, [gxe.ExpectColumnValuesToBeUnique(column="id")], SUMMARY_FORMAT)},
                          tmp_path / "docs", suite_prefix="test")
    with pytest.raises(DataValidationError) as error:
        raise_on_failure(report(outcomes, tmp_path))
    message = str(error.value)
    assert "\n" not in message and "split 'train' expectation expect_column_values_to_be_unique(id)" in message


def test_the_published_docs_render_offline(tmp_path):
    """The Data Docs load Bootstrap, jQuery, bootstrap-table and Vega from copies inside the site:
    opened with no network, the index builds its results table and every image decodes."""
    frame = pd.DataFrame({"id": ["a", "b"], "n": [1, 2]})
    run_suites({"t": (frame, schema_expectations({"id": "str", "n": "int64"}, [], "table"), SUMMARY_FORMAT)},
               tmp_path / "docs", suite_prefix="test")
    pages = sorted(p for p in (tmp_path / "docs").rglob("*") if p.suffix in {".html", ".css"})
    assert pages and not [(p, network_loads(p.read_text())) for p in pages if network_loads(p.read_text())]
    validation_page = next((tmp_path / "docs" / "validations").rglob("*.html"))
    index, validation = browse(tmp_path / "docs", ["index.html", validation_page.relative_to(tmp_path / "docs").as_posix()])
    for result in (index, validation):
        assert all(url.startswith(result["origin"]) for url in result["resources"]), result["resources"]
        assert result["jquery"] == "function" and result["images"] >= 1 and not result["broken_images"]
    assert index["bootstrap_tables"] >= 1 and index["rows"] >= 1  # the table bootstrap-table builds in the browser
    assert validation["tables"] >= 1 and validation["rows"] >= 5  # the validation result's expectation rows


def test_docs_that_would_load_an_unknown_cdn_file_fail_with_one_line(tmp_path):
    frame = pd.DataFrame({"id": ["a"]})
    run_suites({"t": (frame, [gxe.ExpectColumnValuesToBeUnique(column="id")], SUMMARY_FORMAT)},
               tmp_path / "docs", suite_prefix="test")
    page = tmp_path / "docs" / "index.html"
    page.write_text(page.read_text().replace("</head>", '<script src="https://cdn.example.org/new.js"></script></head>'))
    with pytest.raises(ValueError, match=r"index\.html loads https://cdn\.example\.org/new\.js from the network: "
                                         r"add it to web_assets\.json's cdn map$"):
        localize_site(tmp_path / "docs")
