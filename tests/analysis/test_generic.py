"""The generic analysis pieces every study shares: circuit selection, random controls, top cells,
report verdicts and tables."""
import pytest
import torch

from modules.analysis.pairs import PairExamples, random_head_controls, select_circuit, top_cells
from modules.analysis.report import markdown_table, pct_ci, verdict


def test_circuit_is_the_heads_above_the_threshold_strongest_first():
    effects = torch.tensor([[0.1, 0.6], [0.3, 0.02]])
    assert select_circuit(effects, min_effect=0.05, max_heads=12) == [(0, 1), (1, 0), (0, 0)]
    assert select_circuit(effects, min_effect=0.05, max_heads=2) == [(0, 1), (1, 0)]


def test_random_controls_draw_outside_the_circuit_with_its_size():
    heads = [(layer, head) for layer in range(3) for head in range(2)]
    drawn = []
    control = random_head_controls(lambda hs: drawn.append(hs) or {"mean": float(len(hs))}, [(0, 0), (1, 1)],
                                   heads, n_sets=4, seed=0)
    assert control == {"n_sets": 4, "mean": 2.0, "min": 2.0, "max": 2.0}
    assert all(len(hs) == 2 and not {(0, 0), (1, 1)} & set(hs) for hs in drawn)
    assert random_head_controls(lambda hs: {"mean": 0.0}, heads, heads, n_sets=4) is None


def test_top_cells_rank_by_absolute_effect_with_their_cis():
    mean = torch.tensor([[0.1, -0.9], [0.5, 0.0]])
    cells = top_cells(mean, mean - 0.1, mean + 0.1, k=2)
    assert [(c["layer"], c["head"]) for c in cells] == [(0, 1), (1, 0)]
    assert cells[0]["ci_low"] == pytest.approx(-1.0) and cells[0]["ci_high"] == pytest.approx(-0.8)


@pytest.mark.parametrize("low, high, above, expected", [
    (0.92, 0.97, True, "reproduced"), (0.5, 0.8, True, "not reproduced"), (0.85, 0.95, True, "inconclusive"),
    (0.01, 0.03, False, "reproduced"), (0.2, 0.4, False, "not reproduced")])
def test_verdicts_read_the_whole_ci_against_the_claim(low, high, above, expected):
    threshold = 0.9 if above else 0.05
    assert verdict({"ci_low": low, "ci_high": high}, threshold, above) == expected


def test_tables_and_percentages():
    assert markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert pct_ci({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == "50.0% (95% CI 25.0-75.0%)"


def test_pair_examples_batch_by_length_and_subset_keeps_positions():
    ids = [torch.arange(4), torch.arange(5), torch.arange(4)]
    examples = PairExamples(ids, ids, ids, torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0]), torch.tensor([2, 3, 2]),
                            ["a", "b", "a"], ["p0", "p1", "p2"], {"query": torch.tensor([2, 3, 2])})
    assert list(examples.batches(8)) == [[0, 2], [1]]
    sub = examples.subset([2, 1])
    assert sub.group == ["a", "b"] and sub.positions["query"].tolist() == [2, 3] and sub.correct.tolist() == [3, 2]
    assert examples.subset([0]).suffix == 2


def test_a_report_is_written_whole_and_logged_as_a_run_naming_its_sources(tmp_path, monkeypatch):
    import mlflow

    from modules.analysis.report import source_run_ids, write_report

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    figures = tmp_path / "analysis" / "figures"
    figures.mkdir(parents=True)
    (figures / "heat.png").write_bytes(b"png")
    results = {"m": {"evaluate": {"mlflow_run_id": "b" * 32}, "layers": [{"mlflow_run_id": "a" * 32}, {"n": 3}]}}
    assert source_run_ids(results) == ["a" * 32, "b" * 32]
    readme = write_report(tmp_path / "report", "# Report\n", {"m/layers": figures}, study="study-z",
                          run_name="report", results=results)
    assert readme.read_text() == "# Report\n" and (tmp_path / "report/figures/m/layers/heat.png").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("study-z").experiment_id])
    assert run.info.run_name == "report" and run.data.tags["source_runs"] == f"{'a' * 32},{'b' * 32}"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {"report/README.md", "report/figures"}
    with pytest.raises(FileNotFoundError):  # a missing figure folder: nothing written at all
        write_report(tmp_path / "other", "# Other\n", {"x": tmp_path / "nowhere"}, study="study-z",
                     run_name="report", results={})
    assert not (tmp_path / "other").exists()
