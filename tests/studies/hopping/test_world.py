"""Study 3's curated real-world query set: the canonical set, its YAML round trip, the loader's
one-line errors on malformed files, and the Great Expectations suite (the good set passes; each
corruption fails on the expectation that guards it)."""
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from modules.studies.hopping.matching import answer_aliases  # noqa: E402
from modules.studies.hopping.validation.world import validate_world  # noqa: E402
from modules.studies.hopping.world import (COLUMNS, QUERIES, RELATIONS, WorldError, canonical_world,  # noqa: E402
                                           load_world, world_dict, write_world)
from modules.validation import DataValidationError, raise_on_failure  # noqa: E402

SETTINGS = {"min_queries": 150}


def in_set(column: str) -> str:
    return f"expect_column_values_to_be_in_set({column})"


@pytest.fixture(scope="module")
def world():
    return canonical_world()


def test_canonical_set_is_large_varied_and_has_the_paper_form(world):
    assert len(world) >= 150 and world["id"].is_unique and list(world.columns) == list(COLUMNS)
    assert world.groupby(["r1", "r2"]).ngroups >= 20
    imagine = world[world["e1"] == "Imagine"].iloc[0]
    assert imagine["prompt"] == "the spouse of the performer of Imagine is"
    assert imagine["first_hop_prompt"] == "the performer of Imagine is"
    assert imagine["second_hop_prompt"] == "the spouse of John Lennon is"
    assert imagine["entity_shortcut_prompt"] == "the spouse of Imagine is"
    assert imagine["t1_text"] == "the performer of Imagine"
    fuji = world[(world["e1"] == "Mount Fuji") & (world["r2"] == "capital")].iloc[0]
    assert fuji["prompt"] == "the capital of the country of Mount Fuji is" and fuji["e3"] == "Tokyo"


def test_canonical_facts_are_consistent_and_echo_free(world):
    """One bridge per (e1, r1) and one answer per (e2, r2); echoing the bridge never scores as the
    answer under the substring rule."""
    assert (world.groupby(["e1", "r1"])["e2"].nunique() == 1).all()
    assert (world.groupby(["e2", "r2"])["e3"].nunique() == 1).all()
    for row in world.itertuples():
        assert not any(a.lower() in row.e2.lower() for a in answer_aliases(row.e3, row.e3_aliases)), row.id
        assert all(len(a) > 1 for a in (*row.e1_aliases, *row.e2_aliases, *row.e3_aliases)), row.id


def test_canonical_world_is_a_fresh_copy():
    first = canonical_world()
    first.loc[0, "e1"] = "changed"
    first.loc[0, "e3_aliases"].append("changed")
    again = canonical_world()
    assert again.loc[0, "e1"] != "changed" and "changed" not in again.loc[0, "e3_aliases"]


def test_yaml_round_trip(tmp_path, world):
    path = write_world(tmp_path / "world.yaml")
    loaded = load_world(path)
    pd.testing.assert_frame_equal(loaded, world)
    assert loaded.attrs["relations"] == RELATIONS
    assert isinstance(loaded.loc[0, "e1_aliases"], list)


def write_raw(tmp_path, data) -> object:
    path = tmp_path / "world.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def raw_with(change) -> dict:
    data = world_dict(queries=QUERIES[:5])  # small: YAML parsing dominates these tests
    change(data)
    return data


def first_query(key, value):
    def change(data):
        data["queries"][0][key] = value
    return change


@pytest.mark.parametrize("data, message", [
    ("relations: {a: 'the a of {}'\nqueries: [", r"not valid YAML at line \d+, column \d+"),
    ({"relations": {}}, "expected the keys relations, queries"),
    (raw_with(lambda d: d["queries"][0].pop("e2_aliases")), "query q001 lacks the field 'e2_aliases'"),
    (raw_with(lambda d: d["queries"][0].pop("id")), "query number 1 lacks the field 'id'"),
    (raw_with(first_query("r2", "capital city")), "query q001: relation 'capital city' has no template"),
    (raw_with(lambda d: d["relations"].pop("country")), "query q001: relation 'country' has no template"),
    (raw_with(lambda d: d["relations"].update(capital="the capital")), "relation 'capital' needs a template"),
    (raw_with(first_query("id", "q002")), r"duplicate query id\(s\) \['q002'\]"),
    (raw_with(first_query("e3_aliases", ["Eiffel"])),
     "query q001: the answer alias 'Eiffel' occurs in the prompt 'the capital of the country of the Eiffel Tower is'"),
    (raw_with(first_query("e3", "TOWER")), "query q001: the answer alias 'TOWER' occurs"),  # the label, any case
    (raw_with(first_query("e2", "the Eiffel Tower")), "query q001: e1, e2 and e3 must be three different entities"),
    (raw_with(first_query("e3", "France")), "query q001: e1, e2 and e3 must be three different entities"),
    (raw_with(first_query("e1_aliases", "Eiffel Tower")), "query q001: e1_aliases must be a list of strings"),
    (raw_with(first_query("e1", "")), "query q001: e1 must be a non-empty string"),
])
def test_malformed_files_fail_with_one_line(tmp_path, data, message):
    with pytest.raises(WorldError, match=message) as error:
        load_world(write_raw(tmp_path, data))
    assert "\n" not in str(error.value)


def test_e1_equal_to_e3(tmp_path):
    def change(data):
        data["queries"][0].update(e1="Paris", e3="paris")
    with pytest.raises(WorldError, match="q001: e1, e2 and e3 must be three different entities"):
        load_world(write_raw(tmp_path, raw_with(change)))


def test_missing_file_and_refused_write(tmp_path):
    with pytest.raises(WorldError, match="no hopping query set at"):
        load_world(tmp_path / "missing.yaml")
    bad = [dict(QUERIES[0], e3_aliases=["Tower"])]
    with pytest.raises(WorldError, match="answer alias 'Tower'"):
        write_world(tmp_path / "out.yaml", queries=bad)
    assert not (tmp_path / "out.yaml").exists()


# ---- the Great Expectations suite (each run takes seconds: one good run, one corrupted) ----

@pytest.fixture(scope="module")
def good_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("world")
    return validate_world(write_world(tmp / "world.yaml"), SETTINGS, tmp / "docs")


def test_canonical_set_passes_the_suite(good_report):
    assert good_report.success, [str(o) for o in good_report.failures()]
    raise_on_failure(good_report)
    assert good_report.rows == {"world": len(QUERIES)} and good_report.docs_index.is_file()
    summary = json.loads(good_report.summary_path.read_text())
    assert summary["success"] is True and summary["params"] == SETTINGS


def test_each_corruption_fails_on_its_expectation(tmp_path, world):
    frame = world.copy()
    frame.loc[1, "prompt"] = frame.loc[1, "prompt"].replace(" is", " was")           # prompt_ok
    frame.at[2, "e3_aliases"] = ["Colosseum"]                                         # answer_not_in_prompt
    frame.loc[4, "id"] = frame.loc[3, "id"]                                           # unique id
    frame.loc[5, "r2"] = "capital city"                                               # unknown relation
    frame.at[6, "e1_aliases"] = ["A"]                                                 # a 1-character alias
    frame.loc[7, "second_hop_prompt"] = "the capital of Atlantis is"                  # hop_prompts_ok
    report = validate_world(frame, {"min_queries": len(frame) + 1}, tmp_path / "docs")
    failures = {o.expectation: o for o in report.failures()}
    assert set(failures) == {
        in_set("prompt_ok"), in_set("answer_not_in_prompt"), "expect_column_values_to_be_unique(id)",
        in_set("r2"), in_set("templates_ok"), in_set("aliases_ok"), in_set("hop_prompts_ok"),
        "expect_column_unique_value_count_to_be_between(id)"}
    ids = frame["id"]

    def reasons(check):
        return [e["reason"] for e in failures[in_set(check)].examples]
    assert reasons("prompt_ok") == [f"{ids[1]}: prompt_ok"]
    assert reasons("answer_not_in_prompt") == [f"{ids[2]}: answer_not_in_prompt"]
    assert reasons("templates_ok") == [f"{ids[5]}: templates_ok"]
    assert reasons("aliases_ok") == [f"{ids[6]}: aliases_ok"]
    assert reasons("hop_prompts_ok") == [f"{ids[7]}: hop_prompts_ok"]
    assert [e["id"] for e in failures["expect_column_values_to_be_unique(id)"].examples] == [ids[3], ids[3]]
    with pytest.raises(DataValidationError) as error:
        raise_on_failure(report)
    assert "\n" not in str(error.value) and str(error.value).startswith("data validation failed: split 'world'")
