"""The generic Great Expectations plumbing: suites run, Data Docs land in one rename, failures are
one line, and an empty table says so."""
import great_expectations.expectations as gxe
import pandas as pd
import pytest

from modules.validation import (SUMMARY_FORMAT, DataValidationError, ValidationReport, raise_on_failure, run_suites,
                                schema_expectations)


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
