"""Great Expectations validation of study 2's tables: generated data passes, and each kind of
corruption fails on exactly the expectations that guard against it, with a one-line error."""
import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from modules.core.params import ParamsError  # noqa: E402
from modules.studies.ontology.data.dataset import DataConfig, generate, write_tables  # noqa: E402
from modules.studies.ontology.validation import ValidationParams, validate_ontology  # noqa: E402
from modules.studies.ontology.vocabulary import CANONICAL  # noqa: E402
from modules.validation import DataValidationError, raise_on_failure  # noqa: E402

PARAMS = {"hops": 2, "label_tolerance": 0.05}
CONFIG = DataConfig(seed=0, hops=2, items=40, false_items=20, shots=6, onehop=10, onehop_shots=3)


def in_set(column: str) -> str:
    return f"expect_column_values_to_be_in_set({column})"


@pytest.fixture(scope="module")
def frames():
    return generate(CONFIG, CANONICAL)


def copies(frames) -> dict:
    return {name: frame.copy() for name, frame in frames.items()}


def validate(tmp_path, frames, **changed):
    """Write the tables (``changed`` ones as-is, through pandas) and validate them."""
    data = tmp_path / "data"
    write_tables(frames, data)
    for name, frame in changed.items():
        frame.to_parquet(data / f"{name}.parquet", index=False)
    return validate_ontology(data, PARAMS, tmp_path / "docs")


def assert_fails(tmp_path, frames, expected: set, **changed):
    report = validate(tmp_path, frames, **changed)
    assert {(o.split, o.expectation) for o in report.failures()} == expected
    with pytest.raises(DataValidationError) as error:
        raise_on_failure(report)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_generated_tables_pass_and_write_docs_and_summary(tmp_path, frames):
    report = validate(tmp_path, frames)
    assert report.success, [str(o) for o in report.failures()]
    raise_on_failure(report)
    assert report.rows == {"items": 60, "shots": 12, "subtasks": 660, "onehop": 30, "items_vs_shots": 72}
    assert report.docs_index == tmp_path / "docs" / "index.html" and report.docs_index.is_file()
    pages = sorted(p.parent.parent.parent.name for p in (tmp_path / "docs" / "validations").rglob("*.html"))
    assert pages == ["ontology_items", "ontology_items_vs_shots", "ontology_onehop", "ontology_shots",
                     "ontology_subtasks"]
    summary = json.loads(report.summary_path.read_text())
    assert summary["success"] is True and summary["params"] == {"hops": 2, "label_tolerance": 0.05}
    observed = {e["expectation"]: e["observed"] for e in summary["tables"]["items"]["expectations"]}
    assert observed["expect_column_mean_to_be_between(label_fictional)"] == 0.5
    assert observed["expect_column_type_to_be(label)"] == "bool"


def test_wrong_label(tmp_path, frames):
    items = frames["items"].copy()
    items.loc[3, "label"] = not items.loc[3, "label"]
    message = assert_fails(tmp_path, frames, {("items", in_set("label_ok"))}, items=items)
    assert items.loc[3, "id"] in message


def test_cot_with_a_step_removed(tmp_path, frames):
    items = frames["items"].copy()
    steps = items.loc[0, "cot"].split(". ")
    items.loc[0, "cot"] = ". ".join(steps[:2] + steps[3:])             # "E is C2." dropped
    items.loc[0, "answer"] = f"{items.loc[0, 'cot']} {items.loc[0, 'label']}"
    assert_fails(tmp_path, frames, {("items", in_set("cot_ok")), ("items", in_set("answer_ok"))}, items=items)


def test_subtask_target_pointing_at_the_wrong_word(tmp_path, frames):
    subtasks = frames["subtasks"].copy()
    first = subtasks[subtasks["item_id"] == subtasks.loc[0, "item_id"]].set_index("subtask")["target"]
    row = subtasks.index[(subtasks["item_id"] == subtasks.loc[0, "item_id"]) & (subtasks["subtask"] == 1)][0]
    subtasks.loc[row, "target"] = first[3]                              # C1's copy names C2
    assert_fails(tmp_path, frames, {("subtasks", in_set("target_ok")), ("subtasks", in_set("source_ok"))},
                 subtasks=subtasks)


def test_corruption_changing_two_words(tmp_path, frames):
    subtasks = frames["subtasks"].copy()
    row = subtasks.index[(subtasks["subtask"] == 1) & (subtasks["corrupt_segment"] == "input")][0]
    entity = subtasks.loc[row, "prefix"].split()[0]
    other = next(e for e in CANONICAL.entities if e != entity)
    subtasks.loc[row, "corrupted_input"] = subtasks.loc[row, "corrupted_input"].replace(
        f"false: {entity} is", f"false: {other} is")                      # the query's entity too
    assert_fails(tmp_path, frames, {("subtasks", in_set("corruption_ok"))}, subtasks=subtasks)


def test_corruption_of_another_type(tmp_path, frames):
    subtasks = frames["subtasks"].copy()
    row = subtasks.index[(subtasks["target_type"] == "entity") & (subtasks["corrupt_segment"] == "cot")][0]
    prefix, at, old = (subtasks.loc[row, c] for c in ("prefix", "corrupt_char", "corrupted_word"))
    subtasks.loc[row, "replacement"] = "earthy"                          # an entity replaced by an adjective
    subtasks.loc[row, "corrupted_prefix"] = prefix[:at] + "earthy" + prefix[at + len(old):]
    assert_fails(tmp_path, frames, {("subtasks", in_set("replacement_ok"))}, subtasks=subtasks)


def test_duplicated_id(tmp_path, frames):
    subtasks = frames["subtasks"].copy()
    subtasks.loc[1, "id"] = subtasks.loc[0, "id"]
    assert_fails(tmp_path, frames, {("subtasks", "expect_column_values_to_be_unique(id)")}, subtasks=subtasks)


def test_test_item_copied_into_the_shots(tmp_path, frames):
    items, shots = frames["items"], frames["shots"].copy()
    item = items[(items["ontology"] == "fictional") & items["label"]].iloc[0]
    for column in ("entity", "chain", "property", "label", "question", "query", "cot", "answer", "input"):
        shots.loc[0, column] = item[column]
    shots.loc[0, "block"] = f"### Input:\n{item['input']}\n### Response:\n{item['answer']}"
    message = assert_fails(tmp_path, frames, {("shots", in_set("facts_ok")),   # no distractors
                                              ("items_vs_shots", "expect_column_values_to_be_unique(cot)"),
                                              ("items_vs_shots", "expect_column_values_to_be_unique(proof_key)")},
                           shots=shots)
    assert "shots" in message


def test_unbalanced_labels(tmp_path, frames):
    items, subtasks = frames["items"], frames["subtasks"]
    dropped = items[(items["ontology"] == "fictional") & ~items["label"]]["id"].iloc[:10]
    assert_fails(tmp_path, frames, {("items", "expect_column_mean_to_be_between(label_fictional)")},
                 items=items[~items["id"].isin(dropped)], subtasks=subtasks[~subtasks["item_id"].isin(dropped)])


def test_missing_column(tmp_path, frames):
    items = frames["items"].drop(columns=["family"])
    assert_fails(tmp_path, frames, {("items", "expect_table_columns_to_match_ordered_list(table)"),
                                    ("items", "expect_column_type_to_be(family)"),
                                    ("items", "expect_column_values_to_not_be_null(family)"),
                                    ("items", in_set("meta_ok"))}, items=items)


def test_params_fail_with_one_line(tmp_path):
    for params, words in (({"hops": 5}, "validation.hops"), ({"hops": 2, "tolerance": 0.1}, "unknown key"),
                          ({"hops": 2, "label_tolerance": 0.9}, "label_tolerance")):
        with pytest.raises(ParamsError, match=words):
            ValidationParams.from_mapping(params)
    with pytest.raises(ValueError, match="no such Parquet file"):
        validate_ontology(tmp_path / "nothing", PARAMS, tmp_path / "docs")
