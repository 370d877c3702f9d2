"""Great Expectations validation of the fictional graph: generated tables pass, and each corruption
fails exactly the expectations that guard against it, with a one-line error."""
from __future__ import annotations

import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from modules.core.params import ParamsError  # noqa: E402
from modules.studies.hopping.data.graph import GraphConfig, generate_graph, write_tables  # noqa: E402
from modules.studies.hopping.validation.graph import GraphValidationParams, validate_graph  # noqa: E402
from modules.validation import DataValidationError, raise_on_failure  # noqa: E402

CONFIG = GraphConfig(entities={"person": 24, "city": 6, "work": 10, "company": 6}, test_size=20,
                     ood_fraction=0.3, phi=2.0)


COMPOUND_UNIQUE = "expect_compound_columns_to_be_unique(table)"   # (subject_text, relation) in facts


def in_set(column: str) -> str:
    return f"expect_column_values_to_be_in_set({column})"


def unique(column: str) -> str:
    return f"expect_column_values_to_be_unique({column})"


@pytest.fixture(scope="module")
def tables():
    return generate_graph(CONFIG)


def validate(tmp_path, tables, **changed):
    data = tmp_path / "data"
    write_tables({**tables, **changed}, data)
    return validate_graph(data, CONFIG, tmp_path / "docs")


@pytest.fixture(scope="module")
def good(tmp_path_factory, tables):
    return validate(tmp_path_factory.mktemp("good"), tables)


def assert_fails(tmp_path, tables, expected: set, **changed) -> str:
    report = validate(tmp_path, tables, **changed)
    assert {(o.split, o.expectation) for o in report.failures()} == expected
    with pytest.raises(DataValidationError) as error:
        raise_on_failure(report)
    assert "\n" not in str(error.value)
    return str(error.value)


def rename(tables, old: str, new: str) -> dict:
    """Every table with the name ``old`` written ``new`` wherever it occurs."""
    out = {}
    for name, frame in tables.items():
        frame = frame.copy()
        for column in frame.columns:
            if pd.api.types.is_string_dtype(frame[column]):
                frame[column] = frame[column].str.replace(old, new, regex=False)
        out[name] = frame
    return out


def test_generated_tables_pass_and_write_docs_and_summary(good):
    assert good.success, [str(o) for o in good.failures()]
    raise_on_failure(good)
    assert good.rows == {"relations": 11, "entities": 46, "names": 51, "facts": 225, "twohop": 262,
                         "heldout_vs_train": 262, "splits": 3}
    assert good.docs_index.is_file()
    summary = json.loads(good.summary_path.read_text())
    assert summary["success"] is True and summary["params"]["min_name_tokens"] == 2
    assert summary["split_sizes"] == {"train": {"count": 222, "expected": 222},
                                      "test_id": {"count": 20, "expected": 20},
                                      "test_ood": {"count": 20, "expected": 20}}


def test_wrong_two_hop_answer(tmp_path, tables):
    twohop, entities = tables["twohop"].copy(), tables["entities"]
    row = twohop.iloc[0]
    other = entities[(entities["type"] == entities.set_index("entity_id").loc[row["e3_id"], "type"])
                     & ~entities["entity_id"].isin([row["e1_id"], row["e3_id"]])].iloc[0]
    twohop.loc[0, ["e3_id", "e3_name"]] = [other["entity_id"], other["name"]]
    message = assert_fails(tmp_path, tables, {("twohop", in_set("answer_ok"))}, twohop=twohop)
    assert row["query_id"] in message


def test_test_prompt_copied_into_train(tmp_path, tables):
    twohop = tables["twohop"]
    leaked = twohop[twohop["split"] == "test_id"].iloc[[0]].assign(query_id="train-99999", split="train")
    message = assert_fails(tmp_path, tables, {("heldout_vs_train", unique("prompt"))},
                           twohop=pd.concat([twohop, leaked], ignore_index=True))
    assert "across splits" in message and "train" in message and "test_id" in message


def test_duplicated_alias(tmp_path, tables):
    entities, facts = tables["entities"].copy(), tables["facts"].copy()
    first, second = entities.index[entities["alias"] != ""][:2]
    old, new = entities.loc[second, "alias"], entities.loc[first, "alias"]
    entities.loc[second, "alias"] = new
    changed = rename({"entities": entities, "facts": facts}, old, new)
    expected = {("names", unique("text"))}
    if entities.loc[first, "type"] == entities.loc[second, "type"]:    # the alias prompts collide too
        expected.add(("facts", COMPOUND_UNIQUE))
    assert_fails(tmp_path, tables, expected, **changed)


def test_single_token_name(tmp_path, tables):
    name = tables["entities"].loc[5, "name"]
    message = assert_fails(tmp_path, tables, {("names", "expect_column_values_to_be_between(tokens)")},
                           **rename(tables, name, name.split()[0]))
    assert "min_value=2" in message


def test_split_shares_off(tmp_path, tables):
    twohop = tables["twohop"]
    ood = twohop.index[twohop["split"] == "test_ood"]
    message = assert_fails(tmp_path, tables, {("splits", "expect_column_values_to_be_between(ratio)")},
                           twohop=twohop.drop(ood[5:]))
    assert "test_ood" in message


def test_second_object_for_a_functional_relation(tmp_path, tables):
    facts = tables["facts"]
    row = facts[(facts["relation"] == "spouse") & ~facts["ood"]].iloc[0]
    wife = facts[(facts["relation"] == "spouse") & (facts["object_id"] != row["object_id"])].iloc[0]
    extra = row.to_frame().T.assign(object_id=wife["object_id"], answer=wife["answer"]).astype(facts.dtypes)
    assert_fails(tmp_path, tables, {("facts", in_set("functional")),
                                    ("facts", COMPOUND_UNIQUE)},
                 facts=pd.concat([facts, extra], ignore_index=True))


def test_test_id_fact_never_trained_and_test_ood_fact_in_distribution(tmp_path, tables):
    twohop = tables["twohop"].copy()
    test_id = twohop[twohop["split"] == "test_id"].iloc[0]
    train = twohop["split"] == "train"
    uses = train & (((twohop["e1_id"] == test_id["e1_id"]) & (twohop["r1"] == test_id["r1"]))
                    | ((twohop["e2_id"] == test_id["e1_id"]) & (twohop["r2"] == test_id["r1"])))
    # a test_id query moved to test_ood and one back, so the split sizes hold
    ood_row = twohop.index[twohop["split"] == "test_ood"][0]
    id_row = twohop.index[twohop["split"] == "test_id"][1]
    twohop.loc[[ood_row, id_row], "split"] = ["test_id", "test_ood"]
    assert_fails(tmp_path, tables, {("twohop", in_set("facts_seen_in_train")), ("twohop", in_set("facts_ood")),
                                    ("twohop", in_set("facts_in_distribution"))},
                 twohop=twohop[~uses])


def test_settings_and_missing_files_fail_with_one_line(tmp_path):
    base = {"phi": 2.0, "ood_fraction": 0.3, "test_size": 20}
    assert GraphValidationParams.from_settings(base) == GraphValidationParams.from_settings(CONFIG)
    for settings, words in (({"phi": 2.0, "ood_fraction": 0.3}, "missing key"),
                            ({**base, "tolerance": 0.1}, "unknown key"),
                            ({**base, "split_tolerance": 2}, "split_tolerance")):
        with pytest.raises(ParamsError, match=words):
            GraphValidationParams.from_settings(settings)
    with pytest.raises(ValueError, match="no such Parquet file"):
        validate_graph(tmp_path / "nothing", CONFIG, tmp_path / "docs")
