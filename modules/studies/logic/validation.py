"""Great Expectations checks for the propositional-logic dataset splits.

One suite per split (schema, nulls, unique ids, proportions, solver-checked answers) and
two cross-split suites (ids unique over all splits, no prompt shared between splits).
GX runs in an ephemeral context, so a run leaves only the Data Docs site and a JSON summary.

    report = validate_logic_splits({"train": p1, "val": p2, "test": p3},
                                   {"logop_share": 0.5, "operators": ["and", "or"],
                                    "depth": 3, "tolerance": 0.05}, Path("reports/data_docs"))
    raise_on_failure(report)   # DataValidationError with a one-line message
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import great_expectations.expectations as gxe
import pandas as pd
import pyarrow as pa

from modules.core.io import write_json
from modules.core.params import load, param
from modules.studies.logic.data.dataset import SCHEMA, TRACE_SCHEMA
from modules.studies.logic.data.generator import QUERY_CHAINS, RULE_ORDERS
from modules.studies.logic.data.syntax import OPERATORS, PROMPT_ENDS, UNDETERMINED, parse_compact_prompt
from modules.validation import (SUMMARY_FORMAT, ValidationReport, check_docs_dir, read_table, validate_batches,
                                schema_expectations, share_bounds)


def _pandas_dtype(arrow_type: pa.DataType) -> str:
    """The dtype name pandas gives a Parquet column of this type, as GX checks it."""
    return "str" if pa.types.is_string(arrow_type) else str(arrow_type.to_pandas_dtype().__name__)


# The dataset contract, as read back from Parquet: the writer's schema, not a copy of it.
COLUMNS: dict[str, str] = {f.name: _pandas_dtype(f.type) for f in SCHEMA}
TRACE_COLUMNS: dict[str, str] = {f.name: _pandas_dtype(f.type) for f in TRACE_SCHEMA}
TRACES = "traces"
CROSS_IDS, CROSS_PROMPTS = "all_splits_ids", "all_splits_prompts"


@dataclass(frozen=True)
class ValidationParams:
    logop_share: float = param(range=(0.0, 1.0))  # expected share of rows querying the logical-operator chain
    operators: tuple[str, ...] = param(choices=OPERATORS)  # operators in use, expected in equal shares
    depth: int | tuple[int, ...] = param(range=(1, 10**3))  # depth(s) in use, expected in equal shares
    tolerance: float = param(0.05, range=(1e-9, 1.0))  # allowed absolute deviation of every share
    prompt_end: str = param("answer", choices=PROMPT_ENDS)  # `answer`, or at the query variable ("query")
    trace_depth: int | None = param(None, range=(1, 10**3))  # the depth of the trace sequences, when there are any
    rule_order: str = param("shuffled", choices=RULE_ORDERS)  # "chain": premises concluded by rules written before

    def __post_init__(self):
        object.__setattr__(self, "operators", tuple(dict.fromkeys(self.operators)))
        object.__setattr__(self, "depth", tuple(dict.fromkeys(self.depth if isinstance(self.depth, tuple)
                                                                else (self.depth,))))
        if not self.operators:
            raise ValueError("operators must be a non-empty list")
        if self.trace_depth is not None and self.trace_depth in self.depths:
            raise ValueError(f"trace_depth must be an int other than the task's depth {list(self.depths)}, "
                             f"got {self.trace_depth!r}")

    @property
    def depths(self) -> tuple[int, ...]:
        return self.depth

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> "ValidationParams":
        """From {logop_share, operators, depth, tolerance?, prompt_end?, trace_depth?, rule_order?};
        depth is an int or a list."""
        return load(cls, dict(params), "validation", complete=False)


def split_expectations(split: str, params: ValidationParams) -> list[gxe.Expectation]:
    """Expectations for one split, run on the frame returned by `with_check_columns`."""
    checks = schema_expectations(COLUMNS, check_columns(params), "dataset")
    checks += [
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[split]),
        gxe.ExpectColumnValuesToBeInSet(column="operator", value_set=list(params.operators)),
        gxe.ExpectColumnValuesToBeInSet(column="query_chain", value_set=list(QUERY_CHAINS)),
        gxe.ExpectColumnValuesToBeInSet(column="depth", value_set=list(params.depths)),
        gxe.ExpectColumnMeanToBeBetween(
            column="is_logop_query", **share_bounds(params.logop_share, params.tolerance),
            notes="share of rows whose query sits on the logical-operator chain"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="answer", column_B="solver_answer",
            notes="solver_answer comes from an independent forward-chaining solver"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="derivable", column_B="solver_derivable",
            notes="derivable must agree with whether the solver proves the query"),
        gxe.ExpectColumnValuesToBeInSet(
            column="prompt_end_ok", value_set=[True],
            notes=f"every compact prompt ends {_END_NOTES[params.prompt_end]}"),
        *_rule_order_expectations(params),
    ]
    for op in params.operators:
        checks.append(gxe.ExpectColumnMeanToBeBetween(
            column=f"is_op_{op}", **share_bounds(1 / len(params.operators), params.tolerance),
            notes=f"share of rows using operator '{op}'"))
    for depth in params.depths:
        checks.append(gxe.ExpectColumnMeanToBeBetween(
            column=f"is_depth_{depth}", **share_bounds(1 / len(params.depths), params.tolerance),
            notes=f"share of rows of depth {depth}"))
    return checks


def cross_split_expectations() -> dict[str, list[gxe.Expectation]]:
    return {
        CROSS_IDS: [gxe.ExpectColumnValuesToBeUnique(
            column="id", notes="ids are unique over the concatenation of all splits")],
        CROSS_PROMPTS: [gxe.ExpectColumnValuesToBeUnique(
            column="prompt", notes="each split's distinct prompts, concatenated: a repeat "
                                   "is a prompt shared by two splits (a leak)")],
    }


def _rule_order_expectations(params: ValidationParams) -> list[gxe.Expectation]:
    """Rules in proof order, when the data says so (a shuffle may be in proof order by chance, so
    "shuffled" asks nothing)."""
    if params.rule_order != "chain":
        return []
    return [gxe.ExpectColumnValuesToBeInSet(
        column="in_proof_order", value_set=[True],
        notes="every rule's premises are concluded by rules written before it (rule_order: chain)")]


def _in_proof_order(prompt: object) -> bool:
    try:
        rules = parse_compact_prompt(prompt).rules
    except (ValueError, AttributeError):
        return False
    concluded_at = {rule.conclusion: i for i, rule in enumerate(rules)}
    return all(concluded_at.get(p, -1) < i for i, rule in enumerate(rules) for p in rule.premises)


_END_NOTES = {"answer": "with `query Q answer`", "query": "at the query variable: `query Q`"}


def _ends_as(prompt: object, end: str) -> bool:
    tokens = prompt.split() if isinstance(prompt, str) else []
    tail = tokens[-3:] if end == "answer" else tokens[-2:] + ["answer"]
    return len(tail) == 3 and tail[0] == "query" and len(tail[1]) == 1 and tail[1].isupper() and tail[2] == "answer"


def check_columns(params: ValidationParams) -> list[str]:
    return ["solver_answer", "solver_derivable", "prompt_end_ok", "in_proof_order", "is_logop_query",
            *(f"is_op_{op}" for op in params.operators), *(f"is_depth_{d}" for d in params.depths)]


def with_check_columns(frame: pd.DataFrame, params: ValidationParams) -> pd.DataFrame:
    """Copy of `frame` plus the columns the proportion and answer expectations read.

    A missing source column leaves its check column null, so the dependent expectations
    fail rather than the run crashing.
    """
    out = frame.copy()
    prompts = frame["prompt"] if "prompt" in frame else pd.Series(None, index=frame.index)
    solved = {p: _solve(p) for p in prompts.dropna().unique()}
    out["solver_answer"] = prompts.map({p: a for p, (a, _) in solved.items()}).astype(object)
    out["solver_derivable"] = prompts.map({p: d for p, (_, d) in solved.items()}).astype(object)
    out["prompt_end_ok"] = prompts.map(lambda p: _ends_as(p, params.prompt_end))
    out["in_proof_order"] = prompts.map(_in_proof_order)

    def indicator(column: str, value: Any) -> pd.Series:
        if column not in frame:
            return pd.Series(None, index=frame.index, dtype=object)
        return frame[column] == value

    out["is_logop_query"] = indicator("query_chain", "logop")
    for op in params.operators:
        out[f"is_op_{op}"] = indicator("operator", op)
    for depth in params.depths:
        out[f"is_depth_{depth}"] = indicator("depth", depth)
    return out


def trace_expectations(params: ValidationParams) -> list[gxe.Expectation]:
    """Expectations for the trace sequences, run on the frame from `with_trace_check_columns`."""
    checks = schema_expectations(TRACE_COLUMNS, ["solver_trace", "prompt_end_ok", "in_proof_order"], "trace")
    checks += [
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="depth", value_set=[params.trace_depth],
                                        notes="one depth, not the task's: a trace prompt never reads as a task's"),
        gxe.ExpectColumnValuesToBeInSet(column="operator", value_set=list(params.operators)),
        gxe.ExpectColumnValuesToBeInSet(column="query_chain", value_set=list(QUERY_CHAINS)),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="answer", column_B="solver_trace",
            notes="solver_trace: the query's antecedents breadth first, re-derived from the prompt text"),
        gxe.ExpectColumnValuesToBeInSet(column="prompt_end_ok", value_set=[True],
                                        notes=f"every compact prompt ends {_END_NOTES[params.prompt_end]}"),
        *_rule_order_expectations(params),
    ]
    return checks


def with_trace_check_columns(frame: pd.DataFrame, params: ValidationParams) -> pd.DataFrame:
    out = frame.copy()
    prompts = frame["prompt"] if "prompt" in frame else pd.Series(None, index=frame.index, dtype=object)
    out["solver_trace"] = prompts.map(lambda p: _solve(p, trace=True)[0]).astype(object)
    out["prompt_end_ok"] = prompts.map(lambda p: _ends_as(p, params.prompt_end))
    out["in_proof_order"] = prompts.map(_in_proof_order)
    return out


def _solve(prompt: object, trace: bool = False) -> tuple[str, bool | None]:
    """(solver answer, derivable); an unparseable prompt yields an answer naming the error,
    so the answer expectation fails on that row instead of the run crashing."""
    from modules.studies.logic.data import solve_compact, trace_compact

    if not isinstance(prompt, str):
        return f"unsolvable prompt: not a string ({type(prompt).__name__})", None
    try:
        answer = (trace_compact if trace else solve_compact)(prompt)
    except ValueError as exc:
        return f"unsolvable prompt: {exc}", None
    return answer, answer != UNDETERMINED


def cross_split_frames(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Concatenations over splits; `split` is the file's split name, not the column."""
    def column(frame: pd.DataFrame, name: str) -> pd.Series:
        return frame[name].astype(object) if name in frame else pd.Series(None, index=frame.index)

    ids = pd.concat([pd.DataFrame({"split": name, "id": column(f, "id")})
                     for name, f in frames.items()], ignore_index=True)
    prompts = pd.concat([pd.DataFrame({"split": name, "prompt": column(f, "prompt")})
                         .dropna().drop_duplicates("prompt") for name, f in frames.items()],
                        ignore_index=True)
    return {CROSS_IDS: ids, CROSS_PROMPTS: prompts}


# ---- running ----------------------------------------------------------------------------------

def _as_params(params: Mapping[str, Any] | ValidationParams) -> ValidationParams:
    return params if isinstance(params, ValidationParams) else ValidationParams.from_mapping(params)


def validate_logic_splits(split_paths: Mapping[str, Path],
                          params: Mapping[str, Any] | ValidationParams,
                          docs_dir: Path, summary_path: Path | None = None,
                          split_params: Mapping[str, Mapping[str, Any] | ValidationParams] | None = None,
                          traces: Path | None = None) -> ValidationReport:
    """Validate every split file, rebuild the Data Docs site at `docs_dir` and write a JSON
    summary (default `docs_dir/validation_summary.json`). Never raises on a data violation:
    check `report.success` or call `raise_on_failure`.

    ``split_params`` gives a split its own parameters (the frozen benchmark keeps its depth);
    ``traces`` is a Parquet file of trace sequences, checked against ``params.trace_depth`` and
    counted in the no-shared-prompt check."""
    if not split_paths:
        raise ValueError("split_paths is empty; give at least one split name -> Parquet path")
    params = _as_params(params)
    if traces is not None and params.trace_depth is None:
        raise ValueError("traces given without trace_depth in params")
    own = {name: _as_params(p) for name, p in (split_params or {}).items()}
    docs_dir = Path(docs_dir).resolve()  # GX wants an absolute site directory
    summary_path = Path(summary_path) if summary_path else docs_dir / "validation_summary.json"
    check_docs_dir(docs_dir)
    frames = {name: read_table(name, path) for name, path in split_paths.items()}

    summary_format = SUMMARY_FORMAT
    batches = {name: (with_check_columns(frame, own.get(name, params)),
                      split_expectations(name, own.get(name, params)), summary_format)
               for name, frame in frames.items()}
    if traces is not None:
        frames[TRACES] = read_table(TRACES, traces)
        batches[TRACES] = (with_trace_check_columns(frames[TRACES], params), trace_expectations(params),
                           summary_format)
    # Cross-split failures then name the split of each offending row next to its value.
    cross_format = {**summary_format, "unexpected_index_column_names": ["split"]}
    cross = cross_split_frames(frames)
    for name, expectations in cross_split_expectations().items():
        batches[name] = (cross[name], expectations, cross_format)

    report = validate_batches(batches, docs_dir, "logic", summary_path)
    write_json(summary_dict(report, params), summary_path)
    return report


def summary_dict(report: ValidationReport, params: ValidationParams) -> dict:
    splits: dict[str, dict] = {}
    for outcome in report.outcomes:
        entry = splits.setdefault(outcome.split, {"success": True, "expectations": []})
        entry["success"] &= outcome.success
        item = asdict(outcome)
        del item["split"]
        entry["expectations"].append(item)
    for name, rows in report.rows.items():
        splits[name]["rows"] = rows
    described = {("depths" if k == "depth" else k): v for k, v in asdict(params).items()}
    return {"success": report.success, "params": described, "splits": splits,
            "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}


# ---- query-flip pairs (the LLM prompts) ---------------------------------------------------------

PAIR_COLUMNS: dict[str, str] = {
    "pair_id": "str", "depth": "int64",
    **{f"{name}_{chain}": "str" for chain in QUERY_CHAINS
       for name in ("prompt", "answer", "nl_prompt", "nl_answer", "query", "first")},
}
PAIRS = "flip_pairs"


def pair_check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The pair columns plus what the pair expectations read: each chain's solver answer, whether
    the two prompts share their rules and facts, and whether the first proof variables differ."""
    out = frame.copy()

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)

    for chain in QUERY_CHAINS:
        out[f"solver_answer_{chain}"] = column(f"prompt_{chain}").map(lambda p: _solve(p)[0]).astype(object)
        out[f"solved_first_{chain}"] = out[f"solver_answer_{chain}"].map(
            lambda a: a.split()[0] if isinstance(a, str) and a and not a.startswith("unsolvable") else None)
        out[f"nl_ends_with_answer_{chain}"] = column(f"nl_prompt_{chain}").map(
            lambda p: isinstance(p, str) and p.endswith("Answer:"))
    head = lambda p: p.split(" query ")[0] if isinstance(p, str) else None  # noqa: E731
    out["same_rules_facts"] = column("prompt_logop").map(head) == column("prompt_linear").map(head)
    out["firsts_differ"] = column("first_logop") != column("first_linear")
    return out


def pair_expectations() -> list[gxe.Expectation]:
    checks: list[gxe.Expectation] = []
    for column, dtype in PAIR_COLUMNS.items():
        checks.append(gxe.ExpectColumnTypeToBe(column=column, type_=dtype))
        checks.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    checks.append(gxe.ExpectColumnValuesToBeUnique(column="pair_id"))
    for chain in QUERY_CHAINS:
        checks += [
            gxe.ExpectColumnPairValuesToBeEqual(column_A=f"answer_{chain}", column_B=f"solver_answer_{chain}",
                                                notes="the independent solver re-derives every answer"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A=f"first_{chain}", column_B=f"solved_first_{chain}",
                                                notes="the first proof variable is the solver's"),
            gxe.ExpectColumnValuesToBeInSet(column=f"nl_ends_with_answer_{chain}", value_set=[True]),
        ]
    checks += [
        gxe.ExpectColumnValuesToBeInSet(column="same_rules_facts", value_set=[True],
                                        notes="rules and facts are byte-identical; only the query differs"),
        gxe.ExpectColumnValuesToBeInSet(column="firsts_differ", value_set=[True],
                                        notes="the query alone decides the first proof token"),
    ]
    return checks


def validate_flip_pairs(path: Path, docs_dir: Path, summary_path: Path | None = None) -> ValidationReport:
    """Validate a Parquet file of query-flip pairs; Data Docs at `docs_dir`, JSON summary beside."""
    docs_dir = Path(docs_dir).resolve()
    summary_path = Path(summary_path) if summary_path else docs_dir / "validation_summary.json"
    check_docs_dir(docs_dir)
    frame = read_table(PAIRS, path)
    report = validate_batches({PAIRS: (pair_check_frame(frame), pair_expectations(), SUMMARY_FORMAT)}, docs_dir,
                              "logic", summary_path)
    outcomes = report.outcomes
    write_json({"success": report.success, "rows": len(frame), "outcomes": [asdict(o) for o in outcomes],
                "failures": [o.expectation for o in report.failures()]}, summary_path)
    return report
