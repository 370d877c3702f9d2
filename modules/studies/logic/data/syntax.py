"""Text syntax of the logic problems: a neutral structure, its two renderings
(compact tokens, natural language) and the parsers back.

This is the only module the generator and the independent solver share; it
holds no reasoning, only the grammar. See docs/logic/format.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
OPERATORS = ("and", "or")
KEYWORDS = ("rules", "facts", "query", "answer", "or", "and", ">", ".", "1", "0", "undetermined")
VOCAB = LETTERS + KEYWORDS  # the compact format uses exactly these tokens
UNDETERMINED = "undetermined"
# Where a compact prompt stops: after the `answer` keyword (the default), or at the query
# variable itself, which then predicts the first answer token.
PROMPT_ENDS = ("answer", "query")


@dataclass(frozen=True)
class Rule:
    premises: tuple[str, ...]  # one premise, or two joined by `op` in written order
    op: str | None  # None for a plain implication, else "and" / "or"
    conclusion: str


@dataclass(frozen=True)
class Statement:
    rules: tuple[Rule, ...]  # in written order
    facts: tuple[tuple[str, bool], ...]  # (variable, truth) in written order
    query: str


# A proof is the tuple of variables it establishes, in order; () is undetermined.
Proof = tuple[str, ...]


# ---------------------------------------------------------------- rendering

def _rule_text(rule: Rule, implies: str) -> str:
    joiner = f" {rule.op} " if rule.op else ""
    return f"{joiner.join(rule.premises)} {implies} {rule.conclusion}"


def check_prompt_end(end: str) -> None:
    if end not in PROMPT_ENDS:
        raise ValueError(f"prompt_end must be one of {list(PROMPT_ENDS)}, got {end!r}")


def compact_prompt(st: Statement, end: str = "answer") -> str:
    """`rules ... facts ... query Q answer`; with ``end="query"`` the prompt stops at `Q`."""
    check_prompt_end(end)
    rules = " ".join(f"{_rule_text(r, '>')} ." for r in st.rules)
    facts = " ".join(f"{v} {int(t)}" for v, t in st.facts)
    body = f"rules {rules} facts {facts} query {st.query}"
    return body if end == "query" else f"{body} answer"


def end_compact_prompt(prompt: str, end: str) -> str:
    """A compact prompt (ending either way) made to end as ``end`` says."""
    check_prompt_end(end)
    body = prompt.removesuffix(" answer")
    return body if end == "query" else f"{body} answer"


def compact_answer(proof: Proof) -> str:
    return " ".join(proof) if proof else UNDETERMINED


def natural_prompt(st: Statement) -> str:
    rules = " ".join(f"{_rule_text(r, 'implies')}." for r in st.rules)
    facts = " ".join(f"{v} is {'true' if t else 'false'}." for v, t in st.facts)
    return f"Rules: {rules} Facts: {facts} Question: state the truth value of {st.query}. Answer:"


def natural_answer(st: Statement, proof: Proof) -> str:
    if not proof:
        return f"{st.query} is undetermined."
    by_conclusion = {r.conclusion: r for r in st.rules}
    true_facts = {v for v, t in st.facts if t}
    steps = []
    for var in proof:
        if var in true_facts:
            steps.append(f"{var} is true.")
        elif var in by_conclusion:
            steps.append(f"{_rule_text(by_conclusion[var], 'implies')}; {var} is true.")
        else:
            raise ValueError(f"proof variable {var!r} is neither a true fact nor a rule conclusion")
    return " ".join(steps)


def few_shot_prompt(shots: Sequence[tuple[str, str]], nl_prompt: str) -> str:
    """Solved examples (nl_prompt, nl_answer), one per line, then the open problem."""
    lines = [f"{p} {a}" for p, a in shots]
    for line in lines:
        if "\n" in line:
            raise ValueError("few-shot example must be a single line (found a newline in shots)")
    return "\n".join(lines + [nl_prompt])


# ------------------------------------------------------------------ parsing

_VAR = "[A-Z]"
_NL_RULE = re.compile(rf"({_VAR})(?: (and|or) ({_VAR}))? implies ({_VAR})")
_NL_PROBLEM = re.compile(
    rf"Rules:(.*?)Facts:(.*?)Question: state the truth value of ({_VAR})\.\s*(?:Answer:.*)?")
_NL_FACT = re.compile(rf"({_VAR}) is (true|false)")
_NL_STEP = re.compile(rf"(?:(.+) implies ({_VAR}); )?({_VAR}) is true\.")


def _var(token: str, where: str) -> str:
    if token not in LETTERS:
        raise ValueError(f"{where}: expected a variable A-Z, got {token!r}")
    return token


def parse_compact_prompt(text: str) -> Statement:
    """Parse `rules ... facts ... query Q answer` (tokens after `answer` are ignored) or a prompt
    that ends at the query variable, `rules ... facts ... query Q`."""
    tokens = text.split()
    if "answer" in tokens:
        tokens = tokens[:tokens.index("answer")]
    if not tokens or tokens[0] != "rules":
        raise ValueError("compact prompt: must start with 'rules'")
    if "facts" not in tokens or "query" not in tokens:
        raise ValueError("compact prompt: expected 'rules ... facts ... query Q [answer]'")
    i_facts, i_query = tokens.index("facts"), tokens.index("query")
    rule_tokens, fact_tokens, query_tokens = tokens[1:i_facts], tokens[i_facts + 1:i_query], tokens[i_query + 1:]

    rules, current = [], []
    for tok in rule_tokens:
        if tok != ".":
            current.append(tok)
            continue
        if len(current) == 3 and current[1] == ">":
            rules.append(Rule((_var(current[0], "rule"),), None, _var(current[2], "rule")))
        elif len(current) == 5 and current[1] in OPERATORS and current[3] == ">":
            rules.append(Rule((_var(current[0], "rule"), _var(current[2], "rule")), current[1],
                              _var(current[4], "rule")))
        else:
            raise ValueError(f"compact prompt: bad rule {' '.join(current)!r} (want 'X > Y' or 'X or|and Y > Z')")
        current = []
    if current:
        raise ValueError(f"compact prompt: rule {' '.join(current)!r} is not terminated by '.'")

    if len(fact_tokens) % 2:
        raise ValueError("compact prompt: facts must be pairs '<V> <1|0>'")
    facts = []
    for var, truth in zip(fact_tokens[::2], fact_tokens[1::2]):
        if truth not in ("1", "0"):
            raise ValueError(f"compact prompt: fact value must be 1 or 0, got {truth!r}")
        facts.append((_var(var, "fact"), truth == "1"))

    if len(query_tokens) != 1:
        raise ValueError("compact prompt: 'query' must be followed by exactly one variable (then 'answer' or "
                         "the end)")
    return Statement(tuple(rules), tuple(facts), _var(query_tokens[0], "query"))


def _sentences(body: str, where: str) -> list[str]:
    body = body.strip()
    if body and not body.endswith("."):
        raise ValueError(f"natural prompt: {where} must end with '.'")
    return [s.strip() for s in body.split(".") if s.strip()]


def parse_natural_prompt(text: str) -> Statement:
    """Parse the last problem of a (few-shot) prompt; anything after `Answer:` is ignored."""
    lines = [ln for ln in text.split("\n") if ln.startswith("Rules:")]
    if not lines:
        raise ValueError("natural prompt: no line starting with 'Rules:'")
    m = _NL_PROBLEM.fullmatch(lines[-1].strip())
    if not m:
        raise ValueError("natural prompt: expected 'Rules: ... Facts: ... Question: state the truth value of Q. Answer:'")
    rules = []
    for sentence in _sentences(m.group(1), "rules"):
        r = _NL_RULE.fullmatch(sentence)
        if not r:
            raise ValueError(f"natural prompt: bad rule {sentence!r}")
        a, op, b, z = r.groups()
        rules.append(Rule((a, b) if op else (a,), op, z))
    facts = []
    for sentence in _sentences(m.group(2), "facts"):
        f = _NL_FACT.fullmatch(sentence)
        if not f:
            raise ValueError(f"natural prompt: bad fact {sentence!r}")
        facts.append((f.group(1), f.group(2) == "true"))
    return Statement(tuple(rules), tuple(facts), m.group(3))


def parse_prompt(text: str) -> Statement:
    """Either rendering, recognised by its first word."""
    return parse_compact_prompt(text) if text.lstrip().startswith("rules") else parse_natural_prompt(text)


def parse_compact_answer(text: str) -> Proof:
    tokens = text.split()
    if tokens == [UNDETERMINED]:
        return ()
    if not tokens:
        raise ValueError("compact answer: empty (want variables or 'undetermined')")
    return tuple(_var(t, "compact answer") for t in tokens)


def parse_natural_answer(text: str) -> Proof:
    text = text.strip()
    if re.fullmatch(rf"{_VAR} is undetermined\.", text):
        return ()
    if not text:
        raise ValueError("natural answer: empty")
    proof = []
    for step in re.split(r"(?<=\.) +", text):
        m = _NL_STEP.fullmatch(step)
        if not m:
            raise ValueError(f"natural answer: bad step {step!r}")
        rule, concl, var = m.groups()
        if rule is not None and (concl != var or not _NL_RULE.fullmatch(f"{rule} implies {concl}")):
            raise ValueError(f"natural answer: bad step {step!r}")
        proof.append(var)
    return tuple(proof)


def parse_answer(text: str) -> Proof:
    """Either rendering: natural-language answers are sentences containing ' is '."""
    return parse_natural_answer(text) if " is " in text else parse_compact_answer(text)
