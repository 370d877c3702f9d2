"""Great Expectations validation of the logic splits: clean generated data passes, and each
kind of corruption fails on exactly the expectation that guards against it."""
import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd
import pytest

from modules.studies.logic.data import generate_splits, generate_traces, trace_compact, write_splits, write_traces
from modules.studies.logic.validation import ValidationParams, validate_logic_splits
from modules.validation import DataValidationError, raise_on_failure

PARAMS = {"logop_share": 0.8, "operators": ["and", "or"], "depth": 3, "tolerance": 0.2}
SIZES = {"train": 240, "val": 60, "test": 60}
ANSWER_CHECK = "expect_column_pair_values_to_be_equal(answer, solver_answer)"
UNIQUE_ID = "expect_column_values_to_be_unique(id)"


@pytest.fixture(scope="module")
def frames():
    return generate_splits(0, SIZES, depth=3, logop_share=0.8, operators=["and", "or"])


def write(tmp_path, frames, **changed):
    """Write the splits as Parquet, with `changed` frames replacing the clean ones as-is."""
    data = tmp_path / "data"
    paths = write_splits({k: v for k, v in frames.items() if k not in changed}, data)
    for name, frame in changed.items():
        paths[name] = data / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    return paths


def failing(report):
    return {(o.split, o.expectation) for o in report.failures()}


def run(tmp_path, frames, **changed):
    return validate_logic_splits(write(tmp_path, frames, **changed), PARAMS, tmp_path / "docs")


def test_clean_splits_pass_and_write_docs_and_summary(tmp_path, frames):
    paths = write(tmp_path, frames)
    docs = tmp_path / "data_docs"
    report = validate_logic_splits(paths, PARAMS, docs)
    assert report.success, [str(o) for o in report.failures()]
    raise_on_failure(report)  # no-op on success
    assert report.rows == {**SIZES, "all_splits_ids": 360, "all_splits_prompts": 360}

    assert report.docs_index == docs / "index.html" and report.docs_index.is_file()
    pages = sorted(p.parent.parent.parent.name for p in (docs / "validations").rglob("*.html"))
    assert pages == ["logic_all_splits_ids", "logic_all_splits_prompts", "logic_test",
                     "logic_train", "logic_val"]
    assert "logic_train" in report.docs_index.read_text()

    summary = json.loads(report.summary_path.read_text())
    assert summary["success"] is True and summary["failures"] == []
    assert summary["splits"]["train"]["rows"] == 240
    shares = {e["expectation"]: e["observed"] for e in summary["splits"]["train"]["expectations"]}
    share = frames["train"]["query_chain"].eq("logop").mean()
    assert shares["expect_column_mean_to_be_between(is_logop_query)"] == pytest.approx(share)
    assert shares["expect_column_type_to_be(depth)"] == "int64"

    # Re-running replaces the site (no stale pages) and reproduces the summary byte for byte.
    first = report.summary_path.read_bytes()
    again = validate_logic_splits(paths, PARAMS, docs)
    assert again.summary_path.read_bytes() == first
    assert len(list((docs / "validations").rglob("*.html"))) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_wrong_answer_fails_answer_check(tmp_path, frames):
    test = frames["test"].copy()
    row = test.index[test["answer"] != "undetermined"][0]
    test.loc[row, "answer"] = " ".join(reversed(test.loc[row, "answer"].split()))
    report = run(tmp_path, frames, test=test)
    assert failing(report) == {("test", ANSWER_CHECK)}
    with pytest.raises(DataValidationError, match=r"split 'test' expectation "
                       r"expect_column_pair_values_to_be_equal\(answer, solver_answer\): "
                       r"1 of 60 values unexpected"):
        raise_on_failure(report)


def test_unparseable_prompt_fails_answer_check_without_crashing(tmp_path, frames):
    val = frames["val"].copy()
    val.loc[0, "prompt"] = "rules A > B facts A 1 query B answer"  # rule missing its '.'
    report = run(tmp_path, frames, val=val)
    assert ("val", ANSWER_CHECK) in failing(report)
    outcome = next(o for o in report.failures() if o.expectation == ANSWER_CHECK)
    assert "unsolvable prompt" in str(outcome.examples)


def test_duplicate_id_within_split_fails_both_id_checks(tmp_path, frames):
    train = frames["train"].copy()
    train.loc[1, "id"] = train.loc[0, "id"]
    report = run(tmp_path, frames, train=train)
    assert failing(report) == {("train", UNIQUE_ID), ("all_splits_ids", UNIQUE_ID)}


def test_id_reused_across_splits_fails_cross_split_check(tmp_path, frames):
    val = frames["val"].copy()
    val.loc[5, "id"] = frames["train"].loc[7, "id"]
    report = run(tmp_path, frames, val=val)
    assert failing(report) == {("all_splits_ids", UNIQUE_ID)}
    outcome = report.failures()[0]
    assert {e["split"] for e in outcome.examples} == {"train", "val"}


def test_train_test_leak_fails_prompt_overlap_check(tmp_path, frames):
    test = frames["test"].copy()
    leaked = frames["train"].iloc[3]
    for column in test.columns.drop(["id", "split"]):
        test.loc[2, column] = leaked[column]
    report = run(tmp_path, frames, test=test)
    assert failing(report) == {("all_splits_prompts", "expect_column_values_to_be_unique(prompt)")}
    examples = report.failures()[0].examples
    assert {e["split"] for e in examples} == {"train", "test"}
    assert {e["prompt"] for e in examples} == {leaked["prompt"]}
    with pytest.raises(DataValidationError, match="split 'all_splits_prompts' expectation "
                       r"expect_column_values_to_be_unique\(prompt\): 2 of 360 values unexpected "
                       "across splits train, test"):
        raise_on_failure(report)


def test_skewed_query_chain_share_fails_proportion_check(tmp_path, frames):
    train = frames["train"].copy()
    train["query_chain"] = ["logop" if i % 4 == 0 else "linear" for i in range(len(train))]
    report = run(tmp_path, frames, train=train)
    assert failing(report) == {("train", "expect_column_mean_to_be_between(is_logop_query)")}
    assert report.failures()[0].observed == pytest.approx(0.25)
    with pytest.raises(DataValidationError, match=r"observed 0\.25, expected min_value=0\.6"):
        raise_on_failure(report)


def test_null_fails_not_null_check(tmp_path, frames):
    val = frames["val"].copy()
    val.loc[4, "nl_answer"] = None
    report = run(tmp_path, frames, val=val)
    assert failing(report) == {("val", "expect_column_values_to_not_be_null(nl_answer)")}


def test_wrong_dtype_fails_type_check(tmp_path, frames):
    train = frames["train"].copy()
    train["depth"] = train["depth"].astype(str)
    report = run(tmp_path, frames, train=train)
    assert ("train", "expect_column_type_to_be(depth)") in failing(report)
    assert {s for s, _ in failing(report)} == {"train"}
    outcome = next(o for o in report.failures() if o.expectation == "expect_column_type_to_be(depth)")
    assert outcome.observed == "str"


def test_missing_column_fails_schema_check(tmp_path, frames):
    test = frames["test"].drop(columns=["derivable"])
    report = run(tmp_path, frames, test=test)
    fails = failing(report)
    assert ("test", "expect_table_columns_to_match_ordered_list(table)") in fails
    assert ("test", "expect_column_type_to_be(derivable)") in fails
    assert {s for s, _ in fails} == {"test"}
    assert {"Expected Column Position": 13, "Expected": "derivable", "Found": "prompt"} \
        in report.failures()[0].examples
    with pytest.raises(DataValidationError, match="split 'test' expectation "
                                                  "expect_table_columns_to_match_ordered_list"):
        raise_on_failure(report)


@pytest.mark.parametrize("params, message", [
    ({**PARAMS, "logop_share": 1.5}, "logop_share must be a number in"),
    ({**PARAMS, "tolerance": 0}, "tolerance must be a number in"),
    ({**PARAMS, "operators": ["xor"]}, "operators must be"),
    ({**PARAMS, "depth": 0}, "depth must be"),
    ({**PARAMS, "depth": 2.5}, "depth must be"),
    ({**PARAMS, "logop_share": "high"}, "logop_share must be a number"),
    ({"logop_share": 0.5, "operators": ["or"]}, r"missing key\(s\) \['depth'\]"),
    ({**PARAMS, "tolerence": 0.1}, r"unknown key\(s\) \['tolerence'\]"),
    ({**PARAMS, "prompt_end": "middle"}, r"prompt_end must be one of \['answer', 'query'\]"),
    ({**PARAMS, "trace_depth": 3}, r"trace_depth must be an int other than the task's depth \[3\], got 3"),
    ({**PARAMS, "rule_order": "sorted"}, r"rule_order must be one of \['shuffled', 'chain'\], got 'sorted'"),
])
def test_bad_params_raise_one_line_error(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        validate_logic_splits({"train": tmp_path / "train.parquet"}, params, tmp_path / "docs")
    assert not (tmp_path / "docs").exists()


def test_bad_paths_raise_and_leave_nothing(tmp_path, frames):
    with pytest.raises(ValueError, match="split 'train': no such Parquet file"):
        validate_logic_splits({"train": tmp_path / "missing.parquet"}, PARAMS, tmp_path / "docs")
    with pytest.raises(ValueError, match="split_paths is empty"):
        validate_logic_splits({}, PARAMS, tmp_path / "docs")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read Parquet file"):
        validate_logic_splits({"train": corrupt}, PARAMS, tmp_path / "docs")
    assert not (tmp_path / "docs").exists()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a Data Docs site"):
        validate_logic_splits(write(tmp_path, frames), PARAMS, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_params_accept_depth_list_and_reject_bools():
    params = ValidationParams.from_mapping({**PARAMS, "depth": [4, 2, 4]})
    assert params.depths == (4, 2) and params.operators == ("and", "or")
    with pytest.raises(ValueError, match="depth must be"):
        ValidationParams.from_mapping({**PARAMS, "depth": True})


def test_prompt_ending_other_than_configured_fails_its_check(tmp_path, frames):
    report = validate_logic_splits(write(tmp_path, frames), {**PARAMS, "prompt_end": "query"}, tmp_path / "docs")
    end_check = "expect_column_values_to_be_in_set(prompt_end_ok)"
    assert failing(report) == {(split, end_check) for split in SIZES}
    ended = {name: frame.assign(prompt=frame.prompt.str.removesuffix(" answer")) for name, frame in frames.items()}
    report = validate_logic_splits(write(tmp_path / "q", ended), {**PARAMS, "prompt_end": "query"}, tmp_path / "d2")
    assert report.success, [str(o) for o in report.failures()]


def test_rules_out_of_proof_order_fail_the_chain_order_check(tmp_path):
    params = {**PARAMS, "rule_order": "chain", "trace_depth": 5}
    chained = generate_splits(0, SIZES, depth=3, rule_order="chain")
    traces = generate_traces(3, 40, depth=5, rule_order="chain")
    report = validate_logic_splits(write(tmp_path, chained), params, tmp_path / "docs",
                                   traces=write_traces(traces, tmp_path / "traces.parquet"))
    assert report.success, [str(o) for o in report.failures()]
    order_check = "expect_column_values_to_be_in_set(in_proof_order)"
    swapped = chained["val"].copy()  # one prompt's rules written last to first: each before its premises' rules
    rules, rest = swapped.loc[0, "prompt"].split(" facts ")
    reversed_rules = " . ".join(reversed(rules.removeprefix("rules ").removesuffix(" .").split(" . ")))
    swapped.loc[0, "prompt"] = f"rules {reversed_rules} . facts {rest}"
    wrong_traces = traces.assign(prompt=generate_traces(3, 40, depth=5).prompt)  # shuffled rules
    wrong_traces["answer"] = [trace_compact(p) for p in wrong_traces.prompt]
    report = validate_logic_splits(write(tmp_path / "w", chained, val=swapped), params, tmp_path / "d2",
                                   traces=write_traces(wrong_traces, tmp_path / "wrong.parquet"))
    assert failing(report) == {("val", order_check), ("traces", order_check)}
    assert validate_logic_splits(write(tmp_path / "s", chained), {**PARAMS, "rule_order": "shuffled"},
                                 tmp_path / "d3").success  # shuffled asks nothing of the order


TRACE_CHECK = "expect_column_pair_values_to_be_equal(answer, solver_trace)"


def test_traces_are_validated_against_the_solver_and_the_other_splits(tmp_path, frames):
    params = {**PARAMS, "trace_depth": 5}
    traces = generate_traces(3, 50, depth=5)
    path = write_traces(traces, tmp_path / "traces.parquet")
    report = validate_logic_splits(write(tmp_path, frames), params, tmp_path / "docs", traces=path)
    assert report.success, [str(o) for o in report.failures()]
    assert report.rows["traces"] == 50 and report.rows["all_splits_prompts"] == 410

    wrong = traces.copy()
    wrong.loc[3, "answer"] = " ".join(reversed(wrong.loc[3, "answer"].split()))
    wrong.loc[4, "depth"] = 3
    report = validate_logic_splits(write(tmp_path, frames), params, tmp_path / "docs",
                                   traces=write_traces(wrong, tmp_path / "wrong.parquet"))
    assert failing(report) == {("traces", TRACE_CHECK), ("traces", "expect_column_values_to_be_in_set(depth)")}

    leaked = traces.copy()
    leaked.loc[0, "prompt"] = frames["test"].prompt.iloc[0]
    leaked.loc[0, "answer"] = trace_compact(leaked.loc[0, "prompt"])
    report = validate_logic_splits(write(tmp_path, frames), params, tmp_path / "docs",
                                   traces=write_traces(leaked, tmp_path / "leaked.parquet"))
    assert failing(report) == {("all_splits_prompts", "expect_column_values_to_be_unique(prompt)")}
    with pytest.raises(ValueError, match="traces given without trace_depth"):
        validate_logic_splits(write(tmp_path, frames), PARAMS, tmp_path / "docs", traces=path)


def test_a_split_may_keep_its_own_params(tmp_path, frames):
    deeper = generate_splits(5, {"benchmark": 60}, depth=4)
    paths = {**write(tmp_path, frames), **write_splits(deeper, tmp_path / "bench")}
    assert ("benchmark", "expect_column_values_to_be_in_set(depth)") in failing(
        validate_logic_splits(paths, PARAMS, tmp_path / "docs"))
    report = validate_logic_splits(paths, PARAMS, tmp_path / "docs", split_params={"benchmark": {**PARAMS, "depth": 4}})
    assert report.success, [str(o) for o in report.failures()]
