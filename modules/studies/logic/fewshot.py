"""Few-shot behaviour of a causal LM on study 1's query-flip prompts, cell by cell.

A cell is a number of solved examples ``k`` before the test problem and the operator of the
queried LogOp chain (``generate_flip_pairs(..., operator=...)``). Each pair gives two prompts, one
per query direction (docs/logic/llm.md). The evaluator is the LLM study's own:
``build_examples`` tokenises, ``modules.analysis.pairs.behaviour`` decodes greedily; this module
only lays the grid out and tabulates it, with Wilson 95% intervals:

* ``first_token``: the first proof token (the decision point) is the greedy argmax;
* ``proof``: every proof token is (full-proof exact match);
* ``choice``: logit(right first token) > logit(the other direction's first token), the two-way
  choice the flip pair poses (chance 0.5 whatever the rest of the vocabulary does);
* ``pair_both``: per pair (``n_pairs``), the first token right in both directions;
* ``ld_clean`` / ``ld_flip``: mean logit(right first token) - logit(the other one) on the prompt
  and on its query-flipped twin. A model that ignores the question has ``ld_clean == ld_flip``
  (and then ``choice`` is exactly 0.5: of a pair's two directions, one wins the comparison).

Decoding computes the logits of the last position only (:func:`last_position_logits`): the
evaluator reads nothing else, and a 262k-token output layer over every position costs more
than the rest of a 270M model.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from modules.analysis.pairs import behaviour
from modules.core.params import load, param
from modules.engine.metrics import wilson_ci
from modules.studies.logic.data.dataset import generate_flip_pairs
from modules.studies.logic.data.generator import MAX_DEPTH, MIN_DEPTH
from modules.studies.logic.data.syntax import OPERATORS
from modules.studies.logic.llm import DIRECTIONS, build_examples

QUERIES = ("all",) + DIRECTIONS  # the rows of a cell: every prompt, then per query direction
METRICS = ("first_token", "proof", "choice")
COLUMNS = ("model", "k", "operator", "query", "n", "n_pairs", "dropped",
           *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")),
           "pair_both", "pair_both_low", "pair_both_high", "ld_clean", "ld_flip", "seconds", "seconds_per_prompt")


@dataclass(frozen=True)
class FewShotConfig:
    """The behaviour grid: every ``shots`` x ``operators`` cell gets ``pairs`` fresh flip pairs
    (two prompts each) of the given ``depth``."""
    shots: tuple[int, ...] = param((0, 2, 4, 6), range=(0, 64))
    operators: tuple[str, ...] = param(("or", "and"), choices=OPERATORS)
    depth: int = param(2, range=(MIN_DEPTH, MAX_DEPTH))
    pairs: int = param(150, range=(1, 10**6))  # per cell; 2 prompts each
    seed: int = param(0, range=(0, 2**32 - 1))
    batch_size: int = param(8, range=(1, 1 << 16))
    # Machine setting: torch's intra-op threads (0 = leave as it is).
    threads: int = param(0, range=(0, 1024), optional=True)

    def __post_init__(self):
        for name in ("shots", "operators"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct values, got {list(values)}")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], where: str = "logic_llm.fewshot",
                     complete: bool = False) -> "FewShotConfig":
        """Checked by the params schema; ``complete`` requires every recipe key (params.yaml)."""
        return load(cls, dict(params), where, complete=complete)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cell_pairs(config: FewShotConfig, k: int, operator: str, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The flip pairs of one cell (``exclude``: compact prompts that must not appear, e.g. a
    fine-tuning set's)."""
    return generate_flip_pairs(config.seed, config.pairs, depth=config.depth, k=k, exclude=exclude,
                               operator=operator)


def held_out_prompts(config: FewShotConfig) -> set[str]:
    """The compact prompts of every cell of the grid: what fine-tuning data must ``exclude``
    for the grid to stay held out."""
    return {prompt for operator in config.operators for k in config.shots
            for column in ("prompt_logop", "prompt_linear") for prompt in cell_pairs(config, k, operator)[column]}


@contextmanager
def last_position_logits(model) -> Iterator[Any]:
    """Within the block, a forward call that does not say otherwise returns the last position's
    logits only (``logits_to_keep=1``): what greedy decoding and the logit differences read."""
    own = vars(model).get("forward")  # a wrapper already there (accelerate's device hooks) stays under ours
    plain = model.forward

    def forward(*args, **kwargs):
        kwargs.setdefault("logits_to_keep", 1)
        return plain(*args, **kwargs)

    model.forward = forward
    try:
        yield model
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _rate(successes: int, total: int) -> dict[str, float]:
    ci = wilson_ci(successes, total)
    return {"": float(ci.mean), "_low": float(ci.low), "_high": float(ci.high)}


def tabulate(result: Mapping[str, torch.Tensor], group: Sequence[str], pair_id: Sequence[str],
             **cell: Any) -> list[dict]:
    """Rows ``all``, ``logop``, ``linear`` of one cell from ``behaviour``'s output."""
    direction, pair_id = np.asarray(group), np.asarray(pair_id)
    first = result["first_ok"].numpy()
    outcome = {"first_token": first, "proof": result["proof_ok"].numpy(),
               "choice": (result["ld_clean"] > 0).numpy()}
    rows = []
    for query in QUERIES:
        mask = np.ones(len(direction), bool) if query == "all" else direction == query
        if not mask.any():
            continue
        row: dict[str, Any] = {**cell, "query": query, "n": int(mask.sum())}
        for name, values in outcome.items():
            row |= {f"{name}{suffix}": v for suffix, v in _rate(int(values[mask].sum()), int(mask.sum())).items()}
        pairs = sorted(set(pair_id[mask]))
        row["n_pairs"] = len(pairs)
        if query == "all":  # pairs whose both directions survived tokenisation
            both = [p for p in pairs if (pair_id == p).sum() == 2]
            if both:
                solved = sum(bool(first[pair_id == p].all()) for p in both)
                row |= {f"pair_both{s}": v for s, v in _rate(solved, len(both)).items()}
        for name in ("ld_clean", "ld_flip"):
            row[name] = float(result[name][torch.from_numpy(mask)].mean())
        rows.append(row)
    return rows


@torch.no_grad()
def evaluate_pairs(model, tokenizer, pairs: pd.DataFrame, batch_size: int = 8,
                   cell: Mapping[str, Any] | None = None) -> list[dict]:
    """One cell: ``build_examples`` then ``behaviour``, tabulated (see the module docstring);
    ``cell`` (model name, k, operator) is copied into every row."""
    start = time.perf_counter()
    examples = build_examples(pairs, tokenizer)
    was_training = model.training
    model.eval()
    try:
        with last_position_logits(model):
            result = behaviour(model, examples, batch_size)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    dropped = int(sum(examples.dropped.values()))
    rows = tabulate(result, examples.group, examples.pair_id, **(cell or {}))
    for row in rows:
        row |= {"dropped": dropped, "seconds": seconds, "seconds_per_prompt": seconds / len(examples)}
    return rows


def behaviour_table(model, tokenizer, config: FewShotConfig = FewShotConfig(), model_name: str = "",
                    exclude: Iterable[str] = (),
                    progress: Callable[[str], None] = lambda message: None) -> pd.DataFrame:
    """The whole grid: one row per (k, operator, query) with ``COLUMNS``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    exclude = frozenset(exclude)
    rows: list[dict] = []
    for operator in config.operators:
        for k in config.shots:
            pairs = cell_pairs(config, k, operator, exclude)
            cell_rows = evaluate_pairs(model, tokenizer, pairs, config.batch_size,
                                       {"model": model_name, "k": k, "operator": operator})
            top = cell_rows[0]
            progress(f"{model_name} k={k} {operator}: first token {top['first_token']:.3f} "
                     f"[{top['first_token_low']:.3f}, {top['first_token_high']:.3f}], proof {top['proof']:.3f}, "
                     f"n={top['n']}, {top['seconds_per_prompt']:.2f} s/prompt")
            rows += cell_rows
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(COLUMNS))


def markdown(frame: pd.DataFrame, query: str = "all") -> str:
    """The table as Markdown: accuracy with its interval, per model, k and operator."""
    pct = lambda row, m: f"{row[m]:.2f} [{row[m + '_low']:.2f}, {row[m + '_high']:.2f}]"  # noqa: E731
    lines = ["| model | k | operator | n | first token | proof | choice | both directions (pairs) | s/prompt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, row in frame[frame["query"] == query].iterrows():
        both = pct(row, "pair_both") if pd.notna(row.get("pair_both")) else "-"
        lines.append(f"| {row['model']} | {row['k']} | {row['operator']} | {row['n']} | {pct(row, 'first_token')} | "
                     f"{pct(row, 'proof')} | {pct(row, 'choice')} | {both} (n={row['n_pairs']}) | "
                     f"{row['seconds_per_prompt']:.2f} |")
    return "\n".join(lines)
