"""Per-word labels of a compact prompt for auxiliary training targets.

``conclusion_sources`` names, at each rule's conclusion, what that conclusion descends from: the
source variable of its branch (the linear chain, or a LogOp branch before the merge), or the merge
operator for the merge's conclusion and everything after it. With each chain's rules
written in proof order (``rule_order="chain"``), a causal model can compute every label from the
prompt before it, one rule link per layer. A proof's first token needs the same lookup at the
query, so training a layer to hold these labels teaches the lookup densely (README, Benchmarks).
"""
from __future__ import annotations

from modules.studies.logic.data.syntax import parse_compact_prompt


def conclusion_sources(prompt: str) -> list[str | None]:
    """One entry per word of ``prompt``: at the conclusion of each rule, the source variable its
    branch starts from, or the merge operator ``or``/``and`` at and after the merge; None at every
    other word."""
    words = prompt.split()
    rules = parse_compact_prompt(prompt).rules
    concluded = {rule.conclusion: rule for rule in rules}
    labels: list[str | None] = [None] * len(words)
    conclusions = [i + 1 for i, word in enumerate(words[:words.index("facts")]) if word == ">"]
    for position, rule in zip(conclusions, rules, strict=True):
        while not rule.op and rule.premises[0] in concluded:  # walk up to the merge or the source
            rule = concluded[rule.premises[0]]
        labels[position] = rule.op or rule.premises[0]
    return labels
