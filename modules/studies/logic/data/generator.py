"""Problem generator: two variable-disjoint chains (LogOp and linear), a random
query, and the minimal proof known by construction. See docs/logic/format.md.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from modules.studies.logic.data.syntax import LETTERS, OPERATORS, Proof, Rule, Statement

MIN_DEPTH = 2
QUERY_CHAINS = ("logop", "linear")
RULE_ORDERS = ("shuffled", "chain")


def hops(depth: int) -> int:
    """Rule applications from a source to the query: a chain of depth d has d levels."""
    return depth - 1


def pre_merge_length(depth: int) -> int:
    """Plain implications on each source branch before the merge rule."""
    return (hops(depth) - 1) // 2


def variables_needed(depth: int) -> int:
    a, h = pre_merge_length(depth), hops(depth)
    logop = 2 * (1 + a) + (h - a)  # two branches, then merge conclusion and post-merge chain
    return logop + depth  # linear chain: source and its d-1 conclusions


MAX_DEPTH = max(d for d in range(MIN_DEPTH, len(LETTERS)) if variables_needed(d) <= len(LETTERS))


def check_params(depth: int, logop_share: float, operators: Sequence[str]) -> None:
    """Raise a one-line ValueError naming the bad parameter and its allowed range."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not MIN_DEPTH <= depth <= MAX_DEPTH:
        hint = ""
        if isinstance(depth, int) and depth > MAX_DEPTH:
            hint = f" (depth {depth} needs {variables_needed(depth)} variables, only {len(LETTERS)} letters exist)"
        raise ValueError(f"depth must be an int in [{MIN_DEPTH}, {MAX_DEPTH}], got {depth!r}{hint}")
    if isinstance(logop_share, bool) or not isinstance(logop_share, (int, float)) or not 0 <= logop_share <= 1:
        raise ValueError(f"logop_share must be a number in [0, 1], got {logop_share!r}")
    if isinstance(operators, str) or not operators or len(set(operators)) != len(operators) \
            or any(op not in OPERATORS for op in operators):
        raise ValueError(f"operators must be a non-empty list of distinct values from {list(OPERATORS)}, "
                         f"got {operators!r}")


def _chain_rules(chain: Sequence[str]) -> list[Rule]:
    return [Rule((x,), None, y) for x, y in zip(chain, chain[1:])]


@dataclass(frozen=True)
class Problem:
    operator: str  # merge operator, "and" / "or"
    branch_a: tuple[str, ...]  # first-written merge antecedent's branch: source, pre-merge conclusions
    branch_b: tuple[str, ...]  # second-written antecedent's branch
    tail: tuple[str, ...]  # merge conclusion, post-merge conclusions; last is the LogOp query
    linear: tuple[str, ...]  # linear source, its d-1 conclusions; last is the linear query
    value_a: bool  # truth of branch_a's source
    value_b: bool
    linear_value: bool
    query_chain: str  # one of QUERY_CHAINS
    rule_order: tuple[int, ...]  # written order, as indices into canonical_rules()
    fact_order: tuple[int, ...]  # written order of the facts (a, b, linear)

    @property
    def depth(self) -> int:
        return len(self.linear)

    @property
    def query(self) -> str:
        return self.tail[-1] if self.query_chain == "logop" else self.linear[-1]

    def canonical_rules(self) -> list[Rule]:
        merge = Rule((self.branch_a[-1], self.branch_b[-1]), self.operator, self.tail[0])
        return (_chain_rules(self.branch_a) + _chain_rules(self.branch_b) + [merge]
                + _chain_rules(self.tail) + _chain_rules(self.linear))

    def statement(self) -> Statement:
        rules = self.canonical_rules()
        facts = [(self.branch_a[0], self.value_a), (self.branch_b[0], self.value_b),
                 (self.linear[0], self.linear_value)]
        return Statement(tuple(rules[i] for i in self.rule_order),
                         tuple(facts[i] for i in self.fact_order), self.query)

    def proof(self) -> Proof:
        """Minimal proof by construction; () when the query is not derivable."""
        if self.query_chain == "linear":
            return self.linear if self.linear_value else ()
        if self.operator == "or":
            # Both true: the antecedent written first wins.
            branch = self.branch_a if self.value_a else self.branch_b if self.value_b else None
            return branch + self.tail if branch else ()
        return self.branch_a + self.branch_b + self.tail if self.value_a and self.value_b else ()

    def trace(self) -> Proof:
        """The query's antecedents, breadth first (an auxiliary training answer; whatever the
        facts): back along the chain to the merge, then both branches level by level, the
        first-written antecedent's first."""
        if self.query_chain == "linear":
            return self.linear[-2::-1]
        branches = zip(self.branch_a[::-1], self.branch_b[::-1])
        return self.tail[-2::-1] + tuple(v for level in branches for v in level)

    @property
    def source_truth(self) -> str:
        t = lambda v: "T" if v else "F"  # noqa: E731
        return f"{t(self.value_a)}{t(self.value_b)}/{t(self.linear_value)}"


def check_rule_order(rule_order: str) -> None:
    if rule_order not in RULE_ORDERS:
        raise ValueError(f"rule_order must be one of {list(RULE_ORDERS)}, got {rule_order!r}")


def chain_ordered(written: Sequence[int], depth: int) -> tuple[int, ...]:
    """The same interleaving of the two chains' rules, each chain's rules now in proof order
    (pre-merge levels, the merge, the tail; the linear chain source first). Draws nothing."""
    a, h = pre_merge_length(depth), hops(depth)
    n_logop = 2 * a + 1 + (h - a - 1)
    level = lambda i: i - a if a <= i < 2 * a else i  # noqa: E731  (the two branches share levels)
    result = list(written)
    for chain in (lambda i: i < n_logop, lambda i: i >= n_logop):
        slots = [pos for pos, i in enumerate(written) if chain(i)]
        ranked = sorted(slots, key=lambda pos: (level(written[pos]), pos))
        for slot, pos in zip(slots, ranked):
            result[slot] = written[pos]
    return tuple(result)


def sample_problem(rng: random.Random, depth: int = 3, logop_share: float = 0.8,
                   operators: Sequence[str] = OPERATORS,
                   values: tuple[bool, bool, bool] | None = None, rule_order: str = "shuffled") -> Problem:
    """One random problem. `values` forces (value_a, value_b, linear_value).

    Letters are drawn uniformly without replacement, so which branch is written
    first in the merge rule is already uniformly random. ``rule_order`` "chain" keeps the
    random interleaving of the two chains but writes each chain's rules in proof order.
    """
    check_rule_order(rule_order)
    a, h = pre_merge_length(depth), hops(depth)
    letters = rng.sample(LETTERS, variables_needed(depth))
    branch_a, branch_b = tuple(letters[:a + 1]), tuple(letters[a + 1:2 * a + 2])
    tail = tuple(letters[2 * a + 2:h + a + 2])
    linear = tuple(letters[h + a + 2:])
    if values is None:
        values = (rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
    operator = rng.choice(list(operators))
    query_chain = "logop" if rng.random() < logop_share else "linear"
    written = list(range(2 * a + 1 + (h - a - 1) + h))
    rng.shuffle(written)
    fact_order = [0, 1, 2]
    rng.shuffle(fact_order)
    written = chain_ordered(written, depth) if rule_order == "chain" else tuple(written)
    return Problem(operator, branch_a, branch_b, tail, linear, *values, query_chain, written, tuple(fact_order))
