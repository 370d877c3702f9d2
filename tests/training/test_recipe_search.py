"""The recipe search's source labels: a dense target for the lookup that routing needs."""
import json
import sys

import pytest

from benchmarks import explore_training
from benchmarks.explore_training import source_labels
from modules.data.logic.dataset import generate_splits


def test_every_conclusion_is_labelled_by_what_it_descends_from():
    problems = generate_splits(3, {"train": 200}, depth=3, rule_order="chain")["train"]
    for prompt, operator in zip(problems.prompt, problems.operator):
        tokens = prompt.split()
        rules = prompt.split(" facts ")[0].removeprefix("rules ").split(" . ")
        merge = next(r for r in rules if f" {operator} " in r).split(" > ")[0].split(f" {operator} ")
        facts = prompt.split(" facts ")[1].split(" query ")[0].split()[::2]
        (linear_source,) = set(facts) - set(merge)
        labels = [label for label in source_labels(tokens, len(rules)) if label is not None]
        conclusions = [i + 1 for i, t in enumerate(tokens) if t == ">"]
        assert [i for i, label in enumerate(source_labels(tokens, len(rules))) if label] == conclusions
        assert sorted(labels) == sorted([operator] * 2 + [linear_source] * 2), prompt


def test_a_prompt_with_another_number_of_rules_is_not_labelled():
    prompt = generate_splits(0, {"train": 1}, depth=5, rule_order="chain")["train"].prompt[0]
    assert set(source_labels(prompt.split(), 4)) == {None}


def test_source_labels_need_rules_in_proof_order(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["explore_training", "--config", json.dumps({"source_aux": 1.0})])
    with pytest.raises(SystemExit):
        explore_training.main()
    assert "source_aux needs rule_order chain" in capsys.readouterr().err


def test_a_run_with_source_labels_trains_and_reports_their_loss(monkeypatch, capsys):
    config = {"rule_order": "chain", "end_at_query": True, "source_aux": 1.0, "train_size": 256, "n_embd": 24}
    monkeypatch.setattr(sys, "argv", ["explore_training", "--config", json.dumps(config), "--steps", "3",
                                      "--eval-every", "3"])
    explore_training.main()
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["step"] == 3 and record["source_loss"] > 0
