"""The independent solver: agreement with the generator, independence, robustness."""
import ast
from pathlib import Path

import pytest

from modules.studies.logic.data import (answers_agree, backward_trace, check_answer, generate_splits, generate_traces,
                                parse_compact_prompt, solve, solve_compact, solve_natural, trace_compact)

LOGIC = Path(__file__).resolve().parents[3] / "modules" / "studies" / "logic" / "data"


def _imports(module: str) -> set[str]:
    tree = ast.parse((LOGIC / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names - {"__future__"}


def test_solver_imports_only_the_parser():
    assert _imports("solver") == {"modules.studies.logic.data.syntax"}
    assert not any("solver" in name for name in _imports("generator") | _imports("dataset"))
    assert not any(name.startswith(("modules", ".")) for name in _imports("syntax"))


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_solver_agrees_with_generator(depth):
    frame = generate_splits(depth, {"check": 1500}, depth=depth, logop_share=0.5)["check"]
    assert set(frame.operator) == {"and", "or"}
    assert len(set(frame.source_truth)) == 8  # every truth assignment of the three sources
    assert [solve_compact(p) for p in frame.prompt] == list(frame.answer)
    assert [solve_natural(p) for p in frame.nl_prompt] == list(frame.nl_answer)
    assert all(check_answer(p, a) for p, a in zip(frame.prompt, frame.nl_answer))


def test_solver_agrees_at_largest_depths():
    for depth in range(6, 11):
        frame = generate_splits(0, {"check": 100}, depth=depth)["check"]
        assert [solve_compact(p) for p in frame.prompt] == list(frame.answer)


def test_solver_detects_a_wrong_answer():
    frame = generate_splits(1, {"check": 200}, depth=3)["check"]
    for prompt, answer in zip(frame.prompt, frame.answer):
        wrong = "undetermined" if answer != "undetermined" else parse_compact_prompt(prompt).query
        assert not check_answer(prompt, wrong)
        if answer != "undetermined":
            assert not check_answer(prompt, " ".join(answer.split()[1:]))  # proof without its fact


def test_answers_agree_across_renderings():
    assert answers_agree("A E C D", "A is true. A implies E; E is true. E or F implies C; C is true. "
                                    "C implies D; D is true.")
    assert answers_agree("undetermined", "D is undetermined.")
    assert not answers_agree("A E C D", "B F C D")
    assert not answers_agree("undetermined", "A E C D")


def test_cyclic_rules_terminate():
    assert solve_compact("rules B > A . A > B . C > A . facts C 1 query B answer") == "C A B"
    assert solve_compact("rules A > B . B > A . facts C 1 query B answer") == "undetermined"
    assert solve_compact("rules A and C > B . B > A . facts C 1 query B answer") == "undetermined"


def test_or_skips_a_first_premise_it_cannot_prove():
    st = parse_compact_prompt("rules E or F > C . A > E . B > F . facts A 0 B 1 query C answer")
    assert solve(st) == ("B", "F", "C")


@pytest.mark.parametrize("depth", [2, 3, 5, 10])
def test_solver_trace_agrees_with_generator_trace(depth):
    frame = generate_traces(depth, 800, depth, logop_share=0.5)
    assert set(frame.query_chain) == {"logop", "linear"}
    assert [trace_compact(p) for p in frame.prompt] == list(frame.answer)
    for row in frame.itertuples():  # every variable but the query, linear chain or LogOp chain
        st = parse_compact_prompt(row.prompt)
        trace = row.answer.split()
        assert len(trace) == len(set(trace)) and row.query_var not in trace
        assert len(trace) == (depth - 1 if row.query_chain == "linear" else
                              len({v for r in st.rules for v in (*r.premises, r.conclusion)}) - depth - 1)


def test_trace_is_breadth_first_with_premises_as_written():
    st = parse_compact_prompt("rules C > D . A > E . E or F > C . B > F . G > H . facts A 1 B 0 G 1 query D")
    assert backward_trace(st) == ("C", "E", "F", "A", "B")
    cyclic = parse_compact_prompt("rules A > B . B > A . facts A 1 query B")
    assert backward_trace(cyclic) == ("A",)  # each variable once, the query never, however the rules loop
