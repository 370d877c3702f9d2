"""`make metrics`: dvc's metrics as one line each, rates with their intervals, unrun files named."""
from modules.core.metrics_summary import summarise

SHOWN = {"workspace": {"data": {
    "artifacts/logic/metrics/seed0.json": {"data": {
        "seed": 0, "test": {"ci_high": 1.0, "ci_low": 0.9996160016, "exact_match": 1.0, "n": 10000},
        "benchmark": {"ci_high": 0.6710902645, "ci_low": 0.6293327042, "exact_match": 0.6505, "n": 2000}}},
    "artifacts/logic/train/seed0.json": {"data": {"step_to_perfect_val": 4500, "wall_s": 388.99182807,
                                                   "mlflow_run_id": "1e2accc3", "stopped": True}},
    "artifacts/hopping_gpu/llama2-7b/backpatch.json": {"error": {"type": "FileNotFoundError", "msg": "..."}},
}}}


def test_rates_take_one_line_with_their_interval_and_unrun_files_are_named():
    lines = summarise(SHOWN)
    assert lines[0] == "artifacts/logic/metrics/seed0.json"
    assert lines[1].split() == ["test", "1", "(0.9996-1),", "n", "10,000"]
    assert lines[2].split() == ["benchmark", "0.6505", "(0.6293-0.6711),", "n", "2,000"]
    assert lines[3] == "artifacts/logic/train/seed0.json"
    assert [line.split() for line in lines[4:7]] == [["step_to_perfect_val", "4,500"], ["wall_s", "389"],
                                                      ["stopped", "True"]]
    assert lines[7] == "artifacts/hopping_gpu/llama2-7b/backpatch.json: not run"
    assert all(len(line) < 100 for line in lines) and not any("1e2accc3" in line for line in lines)


def test_prefixes_keep_one_studys_files():
    assert summarise(SHOWN, ("artifacts/hopping",)) == ["artifacts/hopping_gpu/llama2-7b/backpatch.json: not run"]
    assert summarise(SHOWN, ("artifacts/logic/train", "artifacts/nothing"))[0] == "artifacts/logic/train/seed0.json"
