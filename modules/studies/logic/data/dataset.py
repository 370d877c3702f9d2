"""Deterministic dataset splits, Parquet writing, few-shot prompts and
query-flip counterfactual pairs. See docs/logic/format.md.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modules.core.io import atomic_file

from modules.studies.logic.data.generator import QUERY_CHAINS, Problem, check_params, sample_problem
from modules.studies.logic.data.syntax import (OPERATORS, UNDETERMINED, check_prompt_end, compact_answer,
                                       compact_prompt, few_shot_prompt, natural_answer, natural_prompt)

SCHEMA = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("depth", pa.int64()), ("operator", pa.string()),
    ("query_chain", pa.string()), ("query_var", pa.string()),
    ("linear_source", pa.string()), ("linear_value", pa.bool_()),
    ("logop_source_a", pa.string()), ("logop_value_a", pa.bool_()),
    ("logop_source_b", pa.string()), ("logop_value_b", pa.bool_()),
    ("source_truth", pa.string()), ("derivable", pa.bool_()),
    ("prompt", pa.string()), ("answer", pa.string()), ("nl_prompt", pa.string()), ("nl_answer", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
# Trace sequences, auxiliary training data: a problem's prompt -> its query's antecedents (docs/logic/format.md)
TRACE_SCHEMA = pa.schema([
    ("id", pa.string()), ("depth", pa.int64()), ("operator", pa.string()), ("query_chain", pa.string()),
    ("query_var", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
])
TRACE_COLUMNS = tuple(TRACE_SCHEMA.names)
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _rng(seed: int, stream: str) -> random.Random:
    # str seeds are hashed with SHA-512: stable across processes and platforms.
    return random.Random(f"logic/{seed}/{stream}")


def renderings(problem: Problem, prompt_end: str = "answer") -> dict[str, str]:
    st, proof = problem.statement(), problem.proof()
    return {"prompt": compact_prompt(st, prompt_end), "answer": compact_answer(proof),
            "nl_prompt": natural_prompt(st), "nl_answer": natural_answer(st, proof)}


def problem_row(problem: Problem, prompt_end: str = "answer") -> dict:
    texts = renderings(problem, prompt_end)
    return {
        "operator": problem.operator, "query_chain": problem.query_chain, "query_var": problem.query,
        "linear_source": problem.linear[0], "linear_value": problem.linear_value,
        "logop_source_a": problem.branch_a[0], "logop_value_a": problem.value_a,
        "logop_source_b": problem.branch_b[0], "logop_value_b": problem.value_b,
        "source_truth": problem.source_truth, "derivable": texts["answer"] != UNDETERMINED,
        **texts,
    }


def _check_sizes(sizes: dict[str, int]) -> None:
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"sizes must be a non-empty dict of split name -> positive int, got {sizes!r}")
    for name, n in sizes.items():
        if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"sizes: split name must match [A-Za-z0-9_-]+, got {name!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sizes[{name!r}] must be an int >= 1, got {n!r}")


def query_twin(problem: Problem) -> Problem:
    """The same rules and facts, queried at the end of the other chain."""
    return replace(problem, query_chain="linear" if problem.query_chain == "logop" else "logop")


def _check_query_twins(query_twins: Iterable[str], sizes: dict[str, int]) -> frozenset[str]:
    if isinstance(query_twins, str):
        raise ValueError(f"query_twins must be a list of split names, got {query_twins!r}")
    twinned = frozenset(query_twins)
    unknown = sorted(twinned - set(sizes))
    if unknown:
        raise ValueError(f"query_twins names split(s) {unknown} that are not in sizes {sorted(sizes)}")
    odd = sorted(split for split in twinned if sizes[split] % 2)
    if odd:
        raise ValueError(f"query_twins: split(s) {odd} must have an even size (a problem and its twin), "
                         f"got {[sizes[split] for split in odd]}")
    return twinned


def generate_splits(seed: int, sizes: dict[str, int], depth: int = 3, logop_share: float = 0.8,
                    operators: Sequence[str] = OPERATORS, exclude: Iterable[str] = (),
                    prompt_end: str = "answer", rule_order: str = "shuffled",
                    query_twins: Iterable[str] = ()) -> dict[str, pd.DataFrame]:
    """Disjoint splits of distinct problems (distinct by compact prompt).

    Each split draws from its own seeded stream. Splits are filled smallest
    first, and a problem already taken is redrawn, so held-out splits do not
    change when a larger training split is resized. Prompts in ``exclude``
    (e.g. another dataset's training split) count as taken. ``prompt_end``
    "query" stops the compact prompts at the query variable (the NL ones are unchanged);
    ``rule_order`` as in ``sample_problem``.

    In the splits named in ``query_twins`` every problem is followed by its query twin: the same
    rules and facts, the other chain's query (so half the rows query each chain, whatever
    ``logop_share``). Rows 2i and 2i+1 are twins; such a split's size must be even.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    check_params(depth, logop_share, operators)
    check_prompt_end(prompt_end)
    _check_sizes(sizes)
    twinned = _check_query_twins(query_twins, sizes)
    taken = set(exclude)
    frames = {}
    for split in sorted(sizes, key=lambda s: (sizes[s], s)):
        rng, rows, attempts = _rng(seed, split), [], 0
        while len(rows) < sizes[split]:
            attempts += 1
            if attempts > 20 * sizes[split] + 1000:
                raise ValueError(f"sizes[{split!r}]={sizes[split]} is more distinct problems than "
                                 f"depth={depth}, operators={list(operators)} can supply")
            problem = sample_problem(rng, depth, logop_share, operators, rule_order=rule_order)
            group = [problem_row(p, prompt_end) for p in ((problem, query_twin(problem)) if split in twinned
                                                          else (problem,))]
            if any(row["prompt"] in taken for row in group):
                continue
            for row in group:
                taken.add(row["prompt"])
                rows.append({"id": f"logic-d{depth}-s{seed}-{split}-{len(rows):07d}", "split": split,
                             "depth": depth, **row})
        frames[split] = _frame(rows)
    return {split: frames[split] for split in sizes}


def splits_from_params(data: Mapping) -> dict[str, pd.DataFrame]:
    """``generate_splits`` as params.yaml's ``logic.data`` section describes the splits."""
    return generate_splits(data["seed"], dict(data["sizes"]), data["depth"], data["logop_share"], data["operators"],
                           prompt_end=data["prompt_end"], rule_order=data["rule_order"],
                           query_twins=data["query_twins"])


def _frame(rows: list[dict], schema: pa.Schema = SCHEMA) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=schema).to_pandas()


def generate_traces(seed: int, n: int, depth: int, logop_share: float = 0.8, operators: Sequence[str] = OPERATORS,
                    prompt_end: str = "answer", exclude: Iterable[str] = (),
                    rule_order: str = "shuffled") -> pd.DataFrame:
    """``n`` distinct problems, each answered by its query's trace (``Problem.trace``) instead of
    its proof. Training on them teaches the rule lookups a proof's first token chains together;
    give them a depth the task does not use, so a trace prompt never reads as a task prompt."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"size must be an int >= 0, got {n!r}")
    check_params(depth, logop_share, operators)
    check_prompt_end(prompt_end)
    taken, rng, rows = set(exclude), _rng(seed, f"traces-d{depth}"), []
    while len(rows) < n:
        problem = sample_problem(rng, depth, logop_share, operators, rule_order=rule_order)
        prompt = compact_prompt(problem.statement(), prompt_end)
        if prompt in taken:
            continue
        taken.add(prompt)
        rows.append({"id": f"trace-d{depth}-s{seed}-{len(rows):07d}", "depth": depth, "operator": problem.operator,
                     "query_chain": problem.query_chain, "query_var": problem.query, "prompt": prompt,
                     "answer": compact_answer(problem.trace())})
    return _frame(rows, TRACE_SCHEMA)


def write_traces(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write trace sequences to one Parquet file, atomically, with deterministic bytes."""
    if tuple(frame.columns) != TRACE_COLUMNS:
        raise ValueError(f"traces columns must be exactly {list(TRACE_COLUMNS)}, got {list(frame.columns)}")
    table = pa.Table.from_pandas(frame, schema=TRACE_SCHEMA, preserve_index=False).replace_schema_metadata()
    _atomic_write_parquet(table, Path(path))
    return Path(path)


def read_traces(path: str | os.PathLike) -> pd.DataFrame:
    return pq.read_table(path, schema=TRACE_SCHEMA).to_pandas()


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3)


def write_splits(frames: dict[str, pd.DataFrame], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `<split>.parquet` per frame, atomically, with deterministic bytes."""
    out = Path(out_dir)
    tables = {}
    for split, frame in frames.items():
        if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
            raise ValueError(f"frames: split name must match [A-Za-z0-9_-]+, got {split!r}")
        if tuple(frame.columns) != COLUMNS:
            raise ValueError(f"frames[{split!r}] columns must be exactly {list(COLUMNS)}, got {list(frame.columns)}")
        # Our own schema, without pandas metadata, keeps bytes independent of dtypes and index.
        tables[split] = pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False).replace_schema_metadata()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, table in tables.items():
        paths[split] = out / f"{split}.parquet"
        _atomic_write_parquet(table, paths[split])
    return paths


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    return pq.read_table(path, schema=SCHEMA).to_pandas()


TRAINING_COLUMNS = ["prompt", "answer", "query_chain", "depth"]


def training_files(data_dir: str | os.PathLike) -> list[Path]:
    """The files a model trains on: the train split, then the trace sequences when there are any."""
    traces = Path(data_dir) / "traces.parquet"
    return [Path(data_dir) / "train.parquet", *([traces] if traces.is_file() else [])]


def read_training_rows(data_dir: str | os.PathLike) -> pd.DataFrame:
    """The rows of ``training_files``, in order, with the columns training reads (prompt, answer,
    query_chain, depth)."""
    paths = training_files(data_dir)
    frames = [read_split(paths[0]), *(read_traces(p) for p in paths[1:])]
    return pd.concat([f[TRAINING_COLUMNS] for f in frames], ignore_index=True)


def few_shot_prompts(nl_prompts: Sequence[str], pool: pd.DataFrame, k: int = 4, seed: int = 0) -> list[str]:
    """For each NL problem, k solved examples drawn from `pool` (rows with
    nl_prompt / nl_answer, never the problem itself), then the problem."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(pool):
        raise ValueError(f"k must be an int in [0, {len(pool) - 1}] (pool has {len(pool)} rows), got {k!r}")
    shots = list(zip(pool["nl_prompt"], pool["nl_answer"]))
    rng = _rng(seed, "few-shot")
    out = []
    for prompt in nl_prompts:
        chosen = [s for s in rng.sample(shots, k + 1) if s[0] != prompt][:k]
        out.append(few_shot_prompt(chosen, prompt))
    return out


def generate_flip_pairs(seed: int, n: int, depth: int = 3, k: int = 4,
                        exclude: Iterable[str] = (), prompt_end: str = "answer",
                        rule_order: str = "shuffled", operator: str = "or") -> pd.DataFrame:
    """Query-flip counterfactual pairs: identical rules and facts, the query
    is the LogOp chain's end in one and the linear chain's end in the other.

    ``operator`` "or" (the paper's setting, the default): exactly one LogOp source and the
    linear source are true, so the first proof variable is the true LogOp source vs the
    linear source. ``operator`` "and": every source is true (the only case with a LogOp
    proof), so it is the first-written merge antecedent's source vs the linear source;
    these pairs come from a stream of their own and their ids read ``flip-and-...``.
    Both NL prompts share the same k solved examples. Neither prompt of a pair
    is in `exclude` (compact prompts, e.g. the training split); compact prompts end as
    ``prompt_end`` says; ``rule_order`` as in ``sample_problem``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {list(OPERATORS)}, got {operator!r}")
    check_params(depth, 0.5, [operator])
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    check_prompt_end(prompt_end)
    taken = set(exclude)
    # The OR stream and ids are those of the generator before it had other operators.
    tag = "" if operator == "or" else f"{operator}-"
    rng, rows = _rng(seed, f"flip-pairs-{tag}d{depth}"), []
    while len(rows) < n:
        if operator == "or":
            a_true = rng.random() < 0.5
            values = (a_true, not a_true, True)
        else:
            values = (True, True, True)
        base = sample_problem(rng, depth, 1.0, [operator], values=values, rule_order=rule_order)
        pair = {chain: replace(base, query_chain=chain) for chain in QUERY_CHAINS}
        texts = {chain: renderings(p, prompt_end) for chain, p in pair.items()}
        if texts["logop"]["prompt"] in taken or texts["linear"]["prompt"] in taken:
            continue
        taken.update(t["prompt"] for t in texts.values())
        shots, rules_facts = [], texts["logop"]["prompt"].split(" query ")[0]
        while len(shots) < k:  # default mix of operators and queries, never the pair's own rules and facts
            shot = renderings(sample_problem(rng, depth))
            if shot["prompt"].split(" query ")[0] != rules_facts:
                shots.append((shot["nl_prompt"], shot["nl_answer"]))
        row = {"pair_id": f"flip-{tag}d{depth}-s{seed}-{len(rows):07d}", "depth": depth}
        for chain, t in texts.items():
            row |= {f"prompt_{chain}": t["prompt"], f"answer_{chain}": t["answer"],
                    f"nl_prompt_{chain}": few_shot_prompt(shots, t["nl_prompt"]),
                    f"nl_answer_{chain}": t["nl_answer"], f"query_{chain}": pair[chain].query,
                    f"first_{chain}": pair[chain].proof()[0]}
        rows.append(row)
    return pd.DataFrame(rows)
