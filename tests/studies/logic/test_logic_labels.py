"""Conclusion-source labels: at each rule's conclusion, its branch's source or the merge operator."""
from pathlib import Path

import pytest

from modules.studies.logic.data import conclusion_sources, generate_splits, parse_compact_prompt


def forward_labels(statement) -> dict[str, str]:
    """Each variable's label, propagated forward from the facts (the module walks backward)."""
    labels = {variable: variable for variable, _ in statement.facts}
    for _ in statement.rules:
        for rule in statement.rules:
            if all(p in labels for p in rule.premises):
                labels[rule.conclusion] = rule.op or labels[rule.premises[0]]
    return labels


@pytest.mark.parametrize("depth,rule_order", [(2, "chain"), (3, "chain"), (3, "shuffled"), (4, "chain"),
                                              (5, "shuffled")])
def test_each_conclusion_is_labelled_by_its_source_or_the_merge(depth, rule_order):
    problems = generate_splits(3, {"train": 100}, depth=depth, rule_order=rule_order)["train"]
    for prompt, operator in zip(problems.prompt, problems.operator):
        statement = parse_compact_prompt(prompt)
        words, labels = prompt.split(), conclusion_sources(prompt)
        assert len(labels) == len(words)
        assert [i for i, label in enumerate(labels) if label] == [i + 1 for i, w in enumerate(words) if w == ">"]
        expected = forward_labels(statement)
        assert [label for label in labels if label] == [expected[rule.conclusion] for rule in statement.rules]
        pre_merge = (depth - 2) // 2  # levels before the merge (docs/logic/format.md)
        assert [label for label in labels if label].count(operator) == depth - 1 - pre_merge  # merge + tail


def test_labels_do_not_depend_on_the_prompt_end():
    for prompt in generate_splits(5, {"train": 50}, depth=3, prompt_end="query")["train"].prompt:
        assert conclusion_sources(prompt + " answer") == conclusion_sources(prompt) + [None]


def test_the_documented_example():
    doc = " ".join((Path(__file__).resolve().parents[3] / "docs" / "logic" / "format.md").read_text().split())
    prompt = "rules F or Z > R . N > G . G > W . R > S . facts N 0 F 1 Z 0 query S answer"
    named = [(w, label) for w, label in zip(prompt.split(), conclusion_sources(prompt)) if label]
    assert f"`{prompt}` the labels are " + ", ".join(f"`{w}: {label}`" for w, label in named) in doc
