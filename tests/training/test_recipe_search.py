"""The recipe search's conclusion-source targets (``source_aux``)."""
import json
import sys

import pytest

from benchmarks import explore_training
from benchmarks.explore_training import labelled, marked
from modules.data.logic.dataset import generate_splits


def test_only_task_prompts_are_labelled():
    task = generate_splits(0, {"train": 1}, depth=3, rule_order="chain")["train"].prompt[0]
    deeper = generate_splits(0, {"train": 1}, depth=5, rule_order="chain")["train"].prompt[0]
    assert labelled(task, 4) and labelled(task.removesuffix(" answer"), 4)
    assert not labelled(deeper, 4) and not labelled(marked(task), 4)


def test_source_targets_need_rules_in_proof_order(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["explore_training", "--config", json.dumps({"source_aux": 1.0})])
    with pytest.raises(SystemExit):
        explore_training.main()
    assert "source_aux needs rule_order chain" in capsys.readouterr().err


def test_a_run_with_source_targets_trains_and_reports_their_loss(monkeypatch, capsys):
    config = {"rule_order": "chain", "end_at_query": True, "source_aux": 1.0, "train_size": 256, "n_embd": 24,
              "backward_aux": 0.5, "trace_depth": 5}
    monkeypatch.setattr(sys, "argv", ["explore_training", "--config", json.dumps(config), "--steps", "3",
                                      "--eval-every", "3"])
    explore_training.main()
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["step"] == 3 and record["source_loss"] > 0


def test_no_save_flag_writes_nothing_even_after_nnsight_is_imported(monkeypatch, capsys, tmp_path):
    import nnsight  # noqa: F401  (it mounts a `save` method on every object)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["explore_training", "--config", json.dumps({"train_size": 64, "n_embd": 24}),
                                      "--steps", "1", "--eval-every", "1"])
    explore_training.main()
    assert json.loads(capsys.readouterr().out.splitlines()[0])["step"] == 1
    assert list(tmp_path.iterdir()) == []
