"""Independent solver: re-derives answers from prompt text alone.

Forward chaining finds every derivable variable; the minimal proof of the
query is then read back following the conventions in docs/logic/format.md.
Deliberately shares nothing with the generator but the text syntax module.
"""
from __future__ import annotations

from modules.studies.logic.data.syntax import (Proof, Rule, Statement, compact_answer, natural_answer,
                                       parse_answer, parse_compact_prompt, parse_natural_prompt, parse_prompt)


def _fires(rule: Rule, known: set[str]) -> bool:
    held = [p in known for p in rule.premises]
    return all(held) if rule.op == "and" else any(held)  # one premise: any == all


def derivable(st: Statement) -> set[str]:
    """Forward chaining to a fixpoint; false facts prove nothing."""
    known = {v for v, truth in st.facts if truth}
    changed = True
    while changed:
        changed = False
        for rule in st.rules:
            if rule.conclusion not in known and _fires(rule, known):
                known.add(rule.conclusion)
                changed = True
    return known


def _prove(var: str, st: Statement, known: set[str], visiting: frozenset[str]) -> list[str] | None:
    if (var, True) in st.facts:
        return [var]
    if var in visiting:  # cyclic rules: this path goes round in a circle
        return None
    visiting = visiting | {var}
    for rule in st.rules:
        if rule.conclusion != var or not _fires(rule, known):
            continue
        if rule.op == "and":
            subproofs = [_prove(p, st, known, visiting) for p in rule.premises]  # every premise, as written
        else:  # implication, or OR: the first written premise that can be proved
            subproofs = next(([sp] for p in rule.premises if p in known
                              and (sp := _prove(p, st, known, visiting)) is not None), [None])
        if any(sp is None for sp in subproofs):
            continue
        steps = []
        for sp in subproofs:
            steps += [v for v in sp if v not in steps]
        return steps + [var]
    return None


def solve(st: Statement) -> Proof:
    """Minimal proof of the query, () when it is undetermined."""
    known = derivable(st)
    if st.query not in known:
        return ()
    return tuple(_prove(st.query, st, known, frozenset()) or ())


def backward_trace(st: Statement) -> Proof:
    """Every antecedent of the query, breadth first, each rule's premises as written."""
    premises = {rule.conclusion: rule.premises for rule in st.rules}
    queue, trace, seen = [st.query], [], {st.query}
    while queue:
        for premise in premises.get(queue.pop(0), ()):
            if premise not in seen:  # cyclic rules visit a variable once
                seen.add(premise)
                trace.append(premise)
                queue.append(premise)
    return tuple(trace)


def trace_compact(prompt: str) -> str:
    return compact_answer(backward_trace(parse_compact_prompt(prompt)))


def solve_compact(prompt: str) -> str:
    return compact_answer(solve(parse_compact_prompt(prompt)))


def solve_natural(prompt: str) -> str:
    st = parse_natural_prompt(prompt)
    return natural_answer(st, solve(st))


def answers_agree(answer_a: str, answer_b: str) -> bool:
    """Same established variables in the same order; either rendering on each side.
    Malformed text raises ValueError."""
    return parse_answer(answer_a) == parse_answer(answer_b)


def check_answer(prompt: str, answer: str) -> bool:
    """Does `answer` (either rendering) match the solver's proof for `prompt` (either rendering)?"""
    return parse_answer(answer) == solve(parse_prompt(prompt))
