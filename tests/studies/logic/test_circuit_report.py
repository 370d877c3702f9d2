"""The circuit study's report across seeds: each claim's verdicts tallied over seeds, its LogOp
control kept with it, and one row a seed in the seeds table."""
from modules.studies.logic.circuit_report import across_seeds, seeds_table, steering_claim


def claim_rows(seed: int, test: str, routing: str, control: str) -> list[list[str]]:
    return [[f"test exact match, seed {seed}", "100% after training", "100.00% (95% CI 99.96-100.00%)", test],
            [f"adapted: routing, seed {seed}", "above 90%", "head (2,0): 6.9% (95% CI 5.5-8.2%)", routing],
            [f"same head, LogOp queries, seed {seed}", "below 5%", "0.2% (95% CI 0.1-0.3%)", control]]


def test_claims_are_tallied_across_seeds_with_their_controls():
    rows = [*claim_rows(0, "reproduced", "not reproduced", "reproduced"),
            *claim_rows(1, "not reproduced", "not reproduced", "inconclusive"),
            *claim_rows(2, "reproduced", "not applicable: the last position is the query", "reproduced")]
    table = across_seeds(rows)
    assert [row[0] for row in table] == ["test exact match", "adapted: routing",
                                         "adapted: routing: the same head on LogOp queries"]
    assert [row[2] for row in table] == ["2 / 1 / 0", "0 / 2 / 0 (1 not applicable)", "2 / 0 / 1"]
    assert table[1][3] == "0: head (2,0): 6.9%; 1: head (2,0): 6.9%; 2: head (2,0): 6.9%"


def test_the_seeds_table_counts_perfect_seeds_and_restarts():
    entry = {"mean": 0.01, "ci_low": -0.01, "ci_high": 0.02}
    seeds = {0: {"circuit": {"circuit": [{"layer": 0, "head": 0}], "sufficiency": entry}},
             3: {"circuit": {"circuit": [], "sufficiency": entry}}}
    evaluation = {0: {"test": {"exact_match": 1.0, "ci_low": 0.9996, "ci_high": 1.0, "n": 10000}},
                  3: {"test": {"exact_match": 0.75, "ci_low": 0.74, "ci_high": 0.76, "n": 10000}}}
    training = {0: {"restarts": 0, "trained_seed": 0, "step_to_perfect_val": 4500, "time_to_perfect_val_s": 343.2},
                3: {"restarts": 2, "restart_checks": ["perfect", "query"], "trained_seed": 457190280,
                    "step_to_perfect_val": None, "time_to_perfect_val_s": None}}
    text = "\n".join(seeds_table(seeds, evaluation, training))
    assert "100.00% in **1 of 2 seeds**" in text
    assert "| 0 | 100.00% (95% CI 99.96-100.00%); n = 10,000 | 0 | step 4,500 (343 s) | (0,0) | 1.0% " in text
    assert "| 3 | 75.00% (95% CI 74.00-76.00%); n = 10,000 | 2 (perfect, query; trained with seed 457190280) | never | none named | n/a |" in text


def test_steering_is_a_claim_with_random_directions_beside_it():
    def entry(mean, low, high):
        return {"mean": mean, "ci_low": low, "ci_high": high}
    random = {"n_directions": 10, "flip": entry(0.003, 0.002, 0.004)}
    strong = {"n": 2000, "difference_of_means": {"flip": entry(0.68, 0.66, 0.70)}, "random": random}
    few = {"n": 2, "difference_of_means": {"flip": entry(0.5, 0.09, 0.91)}, "random": random}
    none = {"n": 654, "difference_of_means": {"flip": entry(0.0, 0.0, 0.006)}, "random": random}
    [row] = steering_claim(0, strong, 1)
    assert row[0].startswith("steering along the layer-2 routing direction") and row[0].endswith(", seed 0")
    assert row[2] == "68.0% (95% CI 66.0-70.0%); random directions 0.3%; n = 2000" and row[3] == "reproduced"
    assert steering_claim(1, few, 1)[0][3] == "inconclusive" and steering_claim(2, none, 1)[0][3] == "not reproduced"
    assert steering_claim(3, {}, 1) == []  # a model that solved no pair is not steered
