"""E5's oracle and control metrics on hand-built results tables, its config errors, and t1/t2 location."""
import pandas as pd
import pytest
import torch

from modules.core.params import ParamsError
from modules.engine.tiny import vocabulary_tokenizer
from modules.studies.hopping.backpatch import (BackpatchConfig, backpatch_metrics, best_pair_held_out, layer_pairs,
                                               success_grid)
from modules.studies.hopping.queries import QueryError, positions

PAIRS = [(1, 0), (2, 0), (2, 1)]


def results(fixed: dict[str, set], subset: str = "incorrect", kind: str = "back", position: str = "t1",
            pairs=PAIRS) -> pd.DataFrame:
    """One row per query and pair; ``fixed[query]`` holds the pairs that name the answer."""
    return pd.DataFrame([{"query_id": q, "subset": subset, "position": position, "kind": kind, "source_layer": s,
                          "target_layer": t, "generation": "", "correct": (s, t) in good, "strict": (s, t) in good,
                          "same_as_baseline": kind == "identity", "baseline": ""}
                         for q, good in fixed.items() for s, t in pairs])


def test_oracle_counts_a_query_fixed_by_any_pair_and_the_controls_separately():
    back = results({"a": {(2, 0)}, "b": {(2, 0), (2, 1)}, "c": set(), "d": set()})
    forward = results({"a": set(), "b": set(), "c": {(0, 1)}, "d": set()}, kind="forward",
                      pairs=[(0, 1), (0, 2), (1, 2)])
    mismatched = results({"a": set(), "b": set(), "c": set(), "d": set()}, kind="mismatched")
    identity = results({q: set() for q in "abcd"}, kind="identity", pairs=[(0, 0), (1, 1), (2, 2)])
    m = backpatch_metrics(pd.concat([back, forward, mismatched, identity]), n_boot=200)["incorrect"]
    t1 = m["t1"]
    assert m["n_queries"] == 4
    assert (t1["oracle"]["k"], t1["oracle"]["n"]) == (2, 4) and t1["oracle"]["mean"] == 0.5
    assert t1["oracle"]["ci_low"] < 0.5 < t1["oracle"]["ci_high"]
    assert t1["forward_oracle"]["k"] == 1 and t1["mismatched_oracle"]["k"] == 0
    assert t1["identity_same_as_baseline"]["mean"] == 1.0
    # pair (2, 0) fixes a and b: 2 of 4 queries; the mean over pairs is (1/3 + 2/3 + 0 + 0) / 4
    assert t1["best_pair_in_sample"] == {"pair": [2, 0], "rate": 0.5}
    assert t1["per_pair_mean"]["mean"] == pytest.approx(0.25)
    assert t1["success_gap"] == {"n": 3, "median": 2.0}
    assert m["either"]["oracle"]["k"] == 2


def test_best_fixed_pair_is_chosen_on_one_half_and_scored_on_the_other():
    # every query is fixed by its own pair only: the in-sample best looks good, held out it fixes none
    own = {"a": {(1, 0)}, "b": {(2, 0)}, "c": {(2, 1)}, "d": set()}
    held_out = best_pair_held_out(results(own), list(own), seed=0)
    assert held_out["n"] == 4 and held_out["k"] == 0 and len(held_out["pairs"]) == 2
    # one pair fixes every query: held out it fixes all of them
    shared = {q: {(2, 0)} for q in "abcd"}
    assert best_pair_held_out(results(shared), list(shared), seed=0)["k"] == 4


def test_break_rate_on_correct_queries_is_the_mean_share_of_pairs_that_lose_the_answer():
    table = results({"a": set(PAIRS), "b": {(1, 0)}}, subset="correct")
    m = backpatch_metrics(table, n_boot=200)["correct"]["t1"]
    assert m["oracle"]["k"] == 2                       # both still right under some pair
    assert m["break_rate"]["mean"] == pytest.approx((0 + 2 / 3) / 2)


def test_success_grid_marks_pairs_not_run_as_nan():
    grid = success_grid(results({"a": {(2, 0)}, "b": set()}), n_layers=3)["backpatch_t1"]
    assert grid[2, 0] == 0.5 and grid[1, 0] == 0.0 and torch.isnan(grid[0, 0]) and torch.isnan(grid[0, 2])


def test_layer_pairs_cover_back_identity_forward_and_mismatched():
    pairs = layer_pairs(4, BackpatchConfig())
    assert len(pairs["back"]) == 6 and all(s > t for s, t in pairs["back"])
    assert pairs["identity"] == [(i, i) for i in range(4)]
    assert sorted(pairs["forward"]) == sorted((t, s) for s, t in pairs["back"])
    assert pairs["mismatched"] == pairs["back"]
    explicit = layer_pairs(4, BackpatchConfig(pairs=((3, 1),), controls=()))
    assert explicit == {"back": [(3, 1)]}


@pytest.mark.parametrize("mapping,message", [
    ({"pairs": [[1, 3]]}, r"source > target \(a back-patch\), got \[1, 3\]"),
    ({"pairs": [[2, 2]]}, r"source > target \(a back-patch\), got \[2, 2\]"),
    ({"positions": ["t3"]}, r"backpatch.positions must be a non-empty subset of \['t1', 't2'\]"),
    ({"controls": ["sideways"]}, r"backpatch.controls must be a subset"),
    ({"max_new_tokens": 0}, r"max_new_tokens"),
])
def test_bad_backpatch_settings_give_one_line(mapping, message):
    with pytest.raises((ValueError, ParamsError), match=message) as error:
        BackpatchConfig.from_mapping(mapping)
    assert "\n" not in str(error.value)


def test_explicit_pair_beyond_the_model_is_refused():
    with pytest.raises(ValueError, match=r"\(9, 1\) is out of range for a model with 4 layers"):
        layer_pairs(4, BackpatchConfig(pairs=((9, 1),)))


def test_positions_are_e1s_last_token_and_the_last_token():
    tokenizer = vocabulary_tokenizer("the spouse of performer Zor Takal is".split())
    where = positions(tokenizer, "the spouse of the performer of Zor Takal is", "the performer of Zor Takal")
    assert where.t1 == 7 and where.t2 == 8 and len(where.ids) == 9
    with pytest.raises(QueryError, match="source position not in the prompt: 'Mira Quill' does not occur"):
        positions(tokenizer, "the spouse of the performer of Zor Takal is", "Mira Quill")


def test_a_source_position_inside_a_token_is_refused():
    # "Takal" ends inside the word "Takalis": no token ends where e1 does
    tokenizer = vocabulary_tokenizer("the spouse of performer Zor Takalis".split())
    with pytest.raises(QueryError, match="no token of .* ends where 'the performer of Zor Takal' does"):
        positions(tokenizer, "the spouse of the performer of Zor Takalis", "the performer of Zor Takal")


def test_stage_table_of_a_subset_with_no_query_is_empty_not_an_error():
    import pandas as pd

    from modules.studies.hopping.layers import LAYER_COLUMNS, stage_summary, stage_table

    tables = {name: pd.DataFrame(columns=["query_id", "subset", *columns[1:]]) for name, columns in LAYER_COLUMNS.items()}
    stages = stage_table(tables)
    assert stages.empty and stage_summary(stages)["first_hop_resolved"]["correct"]["n"] == 0


def _layers_summary(changed: int, total: int) -> dict:
    from modules.studies.hopping.layers import readout_summary

    patch = pd.DataFrame({"query_id": [f"q{i % 4}" for i in range(total)],
                          "same_as_target": [i >= changed for i in range(total)]})
    entry = {"correct": {"n_reached": 3, "n": 4, "median": 2.0, "mean": 2.0},
             "incorrect": {"n_reached": 3, "n": 4, "median": 5.0, "mean": 5.0}}
    return {"readout": readout_summary(patch), "stages": {"first_hop_resolved": entry, "second_hop_resolved":
                                                          {**entry, "correct": {**entry["correct"], "median": 4.0}}}}


def test_a_readout_that_ignores_the_patched_state_makes_e1_claims_not_testable():
    from modules.studies.hopping.report import E1_CLAIMS, _claims

    dead = _claims("graph", {"layers": _layers_summary(0, 200)}, n_layers=6)   # CI upper bound 1.9%
    assert dead[0][0].startswith("(control) the Patchscope readout") and dead[0][3].startswith("uninformative")
    assert "n = 200" in dead[0][2]
    assert [row[0] for row in dead[1:]] == [claim for claim, _ in E1_CLAIMS]
    assert {row[3] for row in dead[1:]} == {"not testable"}
    live = _claims("smollm2", {"layers": _layers_summary(30, 40)}, n_layers=30)
    assert live[0][3] == "informative"
    assert [row[3] for row in live[1:3]] == ["consistent", "consistent"]   # e2 at layer 2 of 30, e3 later


def test_readout_summary_counts_generations_that_differ_from_the_target_prompts_own():
    summary = _layers_summary(3, 40)["readout"]
    assert summary["changed"]["k"] == 3 and summary["changed"]["n"] == 40 and summary["queries"] == 4
    assert summary["changed"]["ci_low"] < 3 / 40 < summary["changed"]["ci_high"]


def test_a_stage_reached_by_too_few_queries_gets_no_verdict():
    from modules.studies.hopping.report import _claims

    summary = _layers_summary(30, 40)
    summary["stages"]["first_hop_resolved"]["correct"]["n_reached"] = 1
    rows = _claims("gemma", {"layers": summary}, n_layers=18)
    assert rows[1][3] == "inconclusive (reached in 1 of 4)"
    assert rows[2][3] == "inconclusive (e2 from t1 reached in 1 of 4)"   # the later hop is compared with it
