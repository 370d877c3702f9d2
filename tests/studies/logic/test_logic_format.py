"""Renderings, proof conventions and parsers, held to docs/logic/format.md."""
from dataclasses import replace
from pathlib import Path

import pytest

from modules.studies.logic.data import (VOCAB, Problem, Rule, Statement, compact_answer, compact_prompt, few_shot_prompt,
                                natural_answer, natural_prompt, parse_answer, parse_compact_answer,
                                parse_compact_prompt, parse_natural_answer, parse_natural_prompt, parse_prompt,
                                solve_compact, solve_natural, trace_compact)

DOC = (Path(__file__).resolve().parents[3] / "docs" / "logic" / "format.md").read_text()

NL_EXAMPLE = ("Rules: C or U implies Z. V implies R. Facts: C is true. V is true. U is false. "
              "Question: state the truth value of R. Answer:")
NL_EXAMPLE_ANSWER = "V is true. V implies R; R is true."

RULES_OR = "rules T > U . E or F > C . A > E . U > V . C > D . S > T . B > F . "
RULES_AND = RULES_OR.replace("E or F", "E and F")
NL_RULES_OR = ("Rules: T implies U. E or F implies C. A implies E. U implies V. C implies D. S implies T. "
               "B implies F. ")

# The doc's depth-4 problem: LogOp A > E, B > F, E ? F > C, C > D; linear S > T > U > V.
BASE = Problem("or", ("A", "E"), ("B", "F"), ("C", "D"), ("S", "T", "U", "V"), True, False, True, "logop",
               rule_order=(5, 2, 0, 6, 3, 4, 1), fact_order=(2, 1, 0))

# (problem, compact prompt, compact answer, NL answer or None): every case is written in the doc.
CASES = {
    "or_one_true": (BASE, RULES_OR + "facts S 1 B 0 A 1 query D answer", "A E C D",
                    "A is true. A implies E; E is true. E or F implies C; C is true. C implies D; D is true."),
    "or_both_true_first_written": (replace(BASE, value_b=True), RULES_OR + "facts S 1 B 1 A 1 query D answer",
                                   "A E C D", None),
    "or_second_true_false_fact": (
        replace(BASE, value_a=False, value_b=True), RULES_OR + "facts S 1 B 1 A 0 query D answer", "B F C D",
        "B is true. B implies F; F is true. E or F implies C; C is true. C implies D; D is true."),
    "or_no_true_source": (replace(BASE, value_a=False), RULES_OR + "facts S 1 B 0 A 0 query D answer",
                          "undetermined", "D is undetermined."),
    "and_both_true": (
        replace(BASE, operator="and", value_b=True), RULES_AND + "facts S 1 B 1 A 1 query D answer", "A E B F C D",
        "A is true. A implies E; E is true. B is true. B implies F; F is true. E and F implies C; C is true. "
        "C implies D; D is true."),
    "and_both_true_reversed": (
        Problem("and", ("B", "F"), ("A", "E"), ("C", "D"), ("S", "T", "U", "V"), True, True, True, "logop",
                rule_order=(5, 2, 1, 6, 3, 4, 0), fact_order=(2, 0, 1)),
        RULES_OR.replace("E or F", "F and E") + "facts S 1 B 1 A 1 query D answer", "B F A E C D", None),
    "and_second_false": (replace(BASE, operator="and"), RULES_AND + "facts S 1 B 0 A 1 query D answer",
                         "undetermined", None),
    "and_first_false": (replace(BASE, operator="and", value_a=False, value_b=True),
                        RULES_AND + "facts S 1 B 1 A 0 query D answer", "undetermined", None),
    "linear_true": (replace(BASE, query_chain="linear"), RULES_OR + "facts S 1 B 0 A 1 query V answer", "S T U V",
                    "S is true. S implies T; T is true. T implies U; U is true. U implies V; V is true."),
    "linear_false_fact": (replace(BASE, query_chain="linear", linear_value=False),
                          RULES_OR + "facts S 0 B 0 A 1 query V answer", "undetermined", "V is undetermined."),
    "depth_2": (Problem("or", ("C",), ("U",), ("Z",), ("V", "R"), True, False, True, "linear",
                        rule_order=(0, 1), fact_order=(0, 2, 1)),
                "rules C or U > Z . V > R . facts C 1 V 1 U 0 query R answer", "V R", NL_EXAMPLE_ANSWER),
    "depth_3": (Problem("or", ("A",), ("B",), ("C", "D"), ("S", "T", "U"), False, True, True, "logop",
                        rule_order=(3, 1, 0, 2), fact_order=(0, 2, 1)),
                "rules T > U . C > D . A or B > C . S > T . facts A 0 S 1 B 1 query D answer", "B C D",
                "B is true. A or B implies C; C is true. C implies D; D is true."),
}


@pytest.mark.parametrize("name", CASES)
def test_generator_renders_doc_example(name):
    problem, prompt, answer, nl_answer = CASES[name]
    st, proof = problem.statement(), problem.proof()
    assert compact_prompt(st) == prompt
    assert compact_answer(proof) == answer
    assert f"{prompt}\n{answer}\n" in DOC
    if nl_answer is not None:
        assert natural_answer(st, proof) == nl_answer
        assert f"\n{nl_answer}\n" in DOC


@pytest.mark.parametrize("name", CASES)
def test_solver_on_hand_written_prompt(name):
    _, prompt, answer, nl_answer = CASES[name]
    assert solve_compact(prompt) == answer
    nl_prompt = natural_prompt(parse_compact_prompt(prompt))
    assert solve_natural(nl_prompt) == (nl_answer or natural_answer(parse_compact_prompt(prompt),
                                                                    parse_compact_answer(answer)))


def test_nl_rendering_of_doc_problem():
    st = BASE.statement()
    expected = NL_RULES_OR + "Facts: S is true. B is false. A is true. Question: state the truth value of D. Answer:"
    assert natural_prompt(st) == expected
    assert expected in DOC


def test_spec_nl_example_round_trip_and_solve():
    st = parse_natural_prompt(NL_EXAMPLE)
    assert st == CASES["depth_2"][0].statement() and CASES["depth_2"][0].depth == 2
    assert st == Statement((Rule(("C", "U"), "or", "Z"), Rule(("V",), None, "R")),
                           (("C", True), ("V", True), ("U", False)), "R")
    assert natural_prompt(st) == NL_EXAMPLE
    assert solve_natural(NL_EXAMPLE) == NL_EXAMPLE_ANSWER
    assert f"{NL_EXAMPLE} {NL_EXAMPLE_ANSWER}\n" in DOC
    assert parse_natural_answer(NL_EXAMPLE_ANSWER) == ("V", "R")


def test_few_shot_prompt_matches_doc_and_solves_last_problem():
    problem, _, answer, nl_answer = CASES["depth_3"]
    text = few_shot_prompt([(NL_EXAMPLE, NL_EXAMPLE_ANSWER)], natural_prompt(problem.statement()))
    assert f"```text\n{text}\n```" in DOC
    assert text.endswith("Answer:") and len(text.split("\n")) == 2
    assert solve_natural(text) == nl_answer
    assert parse_prompt(text) == problem.statement()


def test_compact_tokens_are_in_vocabulary():
    assert len(VOCAB) == 26 + 11 and len(set(VOCAB)) == len(VOCAB)
    for _, prompt, answer, _ in CASES.values():
        assert set(prompt.split()) | set(answer.split()) <= set(VOCAB)
    assert "rules facts query answer or and > . 1 0 undetermined" in DOC


@pytest.mark.parametrize("name", CASES)
def test_parsers_round_trip(name):
    problem, prompt, answer, _ = CASES[name]
    st = problem.statement()
    assert parse_compact_prompt(prompt) == st
    assert parse_natural_prompt(natural_prompt(st)) == st
    assert parse_prompt(prompt) == parse_prompt(natural_prompt(st)) == st
    assert parse_compact_prompt(f"{prompt} {answer}") == st  # answer tokens after `answer` are ignored
    assert parse_compact_prompt(compact_prompt(st, end="query")) == st  # a prompt ending at the query
    assert parse_natural_prompt(f"{natural_prompt(st)} {natural_answer(st, problem.proof())}") == st
    assert parse_answer(answer) == parse_answer(natural_answer(st, problem.proof())) == problem.proof()


@pytest.mark.parametrize("text, match", [
    ("rules A > B . facts A 1 query", "exactly one variable"),
    ("facts A 1 query B answer", "must start with 'rules'"),
    ("rules A > B facts A 1 query B answer", "not terminated"),
    ("rules A >> B . facts A 1 query B answer", "bad rule"),
    ("rules A xor C > B . facts A 1 query B answer", "bad rule"),
    ("rules A > b . facts A 1 query B answer", "expected a variable"),
    ("rules A > B . facts A 2 query B answer", "1 or 0"),
    ("rules A > B . facts A query B answer", "pairs"),
    ("rules A > B . facts A 1 query B C answer", "exactly one variable"),
])
def test_bad_compact_prompt(text, match):
    with pytest.raises(ValueError, match=match):
        parse_compact_prompt(text)


@pytest.mark.parametrize("text, match", [
    ("Facts: A is true. Question: state the truth value of B. Answer:", "no line starting with 'Rules:'"),
    ("Rules: A implies B. Facts: A is true. Question: what is B? Answer:", "expected 'Rules:"),
    ("Rules: A leads to B. Facts: A is true. Question: state the truth value of B. Answer:", "bad rule"),
    ("Rules: A implies B. Facts: A is maybe. Question: state the truth value of B. Answer:", "bad fact"),
    ("Rules: A implies B Facts: A is true. Question: state the truth value of B. Answer:", "must end with"),
])
def test_bad_natural_prompt(text, match):
    with pytest.raises(ValueError, match=match):
        parse_natural_prompt(text)


@pytest.mark.parametrize("text", ["", "A b", "A undetermined", "A is true. B implies C; D is true.",
                                  "A is true B is true.", "A is maybe.", "A implies; B is true."])
def test_bad_answer(text):
    with pytest.raises(ValueError):
        parse_answer(text)


@pytest.mark.parametrize("problem, trace", [(BASE, "C E F A B"), (replace(BASE, query_chain="linear"), "U T S")])
def test_query_ending_prompt_and_trace_doc_examples(problem, trace):
    prompt = compact_prompt(problem.statement(), end="query")
    assert prompt == compact_prompt(problem.statement()).removesuffix(" answer")
    assert f"{prompt}\n{trace}\n" in DOC
    assert compact_answer(problem.trace()) == trace == trace_compact(prompt)
    if problem.query_chain == "logop":
        assert f"{prompt}\n{compact_answer(problem.proof())}\n" in DOC
    with pytest.raises(ValueError, match=r"prompt_end must be one of \['answer', 'query'\]"):
        compact_prompt(problem.statement(), end="Answer")


def test_chain_rule_order_of_the_doc_example():
    from modules.studies.logic.data.generator import chain_ordered
    ordered = replace(BASE, rule_order=chain_ordered(BASE.rule_order, BASE.depth))
    assert f"`{RULES_OR.strip()}`" in DOC
    written = compact_prompt(ordered.statement()).split(" facts")[0]
    assert written == "rules S > T . A > E . B > F . T > U . E or F > C . U > V . C > D ."
    assert f"`{written}`" in DOC and ordered.proof() == BASE.proof()
