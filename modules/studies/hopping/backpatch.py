"""E5: back-patching (the paper's §3.5) with the controls the paper lacked.

For each query and source position (t1: e1's last token, t2: the last token), the block-ℓs output at
that position is written into block ℓt's output at the same position during the prompt pass, then 10
tokens are decoded greedily; the answer is right when any alias of e3 occurs in them (the paper's
substring rule). The paper's number is an *oracle*: a query counts as fixed when any ℓs > ℓt pair
fixes it. Beside it:

- identity pairs (ℓs = ℓt) must reproduce the unpatched generation exactly;
- forward pairs (ℓs < ℓt), the same best-of-many over the other half of the grid;
- a mismatched source: another query's states (a different bridge and answer) at the same position,
  best-of-many over ℓs > ℓt: how often a large grid finds the answer without the query's own state;
- the best single fixed (ℓs, ℓt) pair, chosen on one half of the queries and scored on the other
  (a non-oracle rate), and the in-sample best for comparison;
- the mean over pairs;
- on the queries the model gets right, how often a back-patch breaks them.

Every rate has its n and a CI (Wilson for shares of queries, a bootstrap over queries for means).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from modules.core.params import load, param
from modules.engine.adapters import get_adapter
from modules.engine.hooks import capture_positions
from modules.engine.metrics import mean_with_ci
from modules.engine.patchscope import backpatch_grid, generate_greedy
from modules.studies.hopping.matching import first_entity_match, mentions
from modules.studies.hopping.queries import answer_text, ci, positions

RESULT_COLUMNS = ("query_id", "subset", "position", "kind", "source_layer", "target_layer", "generation", "correct",
                  "strict", "same_as_baseline", "baseline")
KINDS = ("back", "identity", "forward", "mismatched")
POSITIONS = ("t1", "t2")


@dataclass(frozen=True)
class BackpatchConfig:
    positions: tuple[str, ...] = param(POSITIONS)
    incorrect_items: int = param(16, range=(0, 10**6))   # of the target set (both hops known, two-hop wrong)
    correct_items: int = param(16, range=(0, 10**6))     # of the composition-correct set (damage control)
    pairs: tuple[tuple[int, ...], ...] = param(())  # explicit (ℓs, ℓt) back pairs, each ℓs > ℓt; empty: every ℓs > ℓt
    controls: tuple[str, ...] = param(("identity", "forward", "mismatched"))
    max_new_tokens: int = param(10, range=(1, 256))
    batch_size: int = param(32, range=(1, 4096))
    n_boot: int = param(1000, range=(10, 10**6))
    seed: int = param(0, range=(0, 2**31 - 1))
    threads: int = param(0, range=(0, 1024), optional=True)

    def __post_init__(self):
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(f"backpatch.positions must be a non-empty subset of {list(POSITIONS)}, got {list(self.positions)}")
        bad = [c for c in self.controls if c not in KINDS[1:]]
        if bad:
            raise ValueError(f"backpatch.controls must be a subset of {list(KINDS[1:])}, got {bad}")
        for pair in self.pairs:
            if len(pair) != 2 or int(pair[0]) <= int(pair[1]):
                raise ValueError(f"backpatch.pairs must be [source_layer, target_layer] with source > target (a "
                                 f"back-patch), got {list(pair)}; identity and forward pairs are run by backpatch.controls")

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False) -> "BackpatchConfig":
        return load(cls, dict(mapping), "hopping.backpatch", complete=complete)


def layer_pairs(n_layers: int, config: BackpatchConfig) -> dict[str, list[tuple[int, int]]]:
    """The (ℓs, ℓt) pairs of each kind for a model of ``n_layers`` blocks."""
    if config.pairs:
        back = [(int(s), int(t)) for s, t in config.pairs]
        for s, t in back:
            if not 0 <= t < s < n_layers:
                raise ValueError(f"backpatch.pairs: ({s}, {t}) is out of range for a model with {n_layers} layers "
                                 f"(0..{n_layers - 1})")
    else:
        back = [(s, t) for s in range(n_layers) for t in range(n_layers) if s > t]
    pairs = {"back": back}
    if "identity" in config.controls:
        pairs["identity"] = [(layer, layer) for layer in range(n_layers)]
    if "forward" in config.controls:
        pairs["forward"] = [(t, s) for s, t in back]
    if "mismatched" in config.controls:
        pairs["mismatched"] = back
    return pairs


def mismatched_partners(queries: pd.DataFrame, pool: pd.DataFrame, seed: int) -> dict[str, str]:
    """For each query, another query of ``pool`` with a different bridge and answer (seeded choice)."""
    rng = np.random.default_rng(seed)
    partners = {}
    for row in queries.itertuples():
        options = pool[(pool["e2"] != row.e2) & (pool["e3"] != row.e3) & (pool["query_id"] != row.query_id)]
        if options.empty:
            raise ValueError(f"no query with another bridge than {row.e2!r} to take a mismatched source from")
        partners[row.query_id] = str(options["query_id"].iloc[int(rng.integers(len(options)))])
    return partners


def block_states(model, ids: list[int], position: int) -> torch.Tensor:
    """``[n_layers, d]``: every block's output at ``position`` of one prompt."""
    adapter = get_adapter(model)
    sites = [f"resid_post.{layer}" for layer in range(adapter.n_layers)]
    acts = capture_positions(model, torch.tensor([ids]), sites, [position])
    return torch.stack([acts[site][0, 0] for site in sites])


def run_backpatching(model, tokenizer, queries: pd.DataFrame, evaluated: pd.DataFrame, pool: pd.DataFrame,
                     config: BackpatchConfig, progress: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """The long table of every patched generation: query, subset, position, kind, ℓs, ℓt, text, and
    whether it names e3 (substring and strict rules) and equals the unpatched generation.

    ``queries`` are the analysable queries; ``evaluated`` their E0 rows (subsets); ``pool`` the
    queries that mismatched sources come from."""
    subset = evaluated.set_index("query_id")["subset"]
    chosen = pd.concat([queries[queries["query_id"].map(subset) == "incorrect"].head(config.incorrect_items),
                        queries[queries["query_id"].map(subset) == "correct"].head(config.correct_items)])
    n_layers = get_adapter(model).n_layers
    pairs = layer_pairs(n_layers, config)
    partners = mismatched_partners(chosen, pool, config.seed) if "mismatched" in pairs else {}
    pool_by_id = pool.set_index("query_id")
    rows = []
    for done, query in enumerate(chosen.itertuples()):
        where = positions(tokenizer, query.prompt, query.t1_text)
        ids = torch.tensor([where.ids])
        baseline_tokens = generate_greedy(model, ids, config.max_new_tokens).tokens[0]
        baseline = answer_text(tokenizer, baseline_tokens)
        kinds = ["back", "identity"] if subset[query.query_id] == "correct" else list(pairs)
        for name in config.positions:
            position = where.t1 if name == "t1" else where.t2
            for kind in kinds:
                if kind not in pairs:
                    continue
                source = None
                if kind == "mismatched":
                    partner = pool_by_id.loc[partners[query.query_id]]
                    other = positions(tokenizer, partner["prompt"], partner["t1_text"])
                    source = block_states(model, other.ids, other.t1 if name == "t1" else other.t2)
                tokens = backpatch_grid(model, ids, position, pairs[kind], max_new_tokens=config.max_new_tokens,
                                        source_states=source, batch_size=config.batch_size).tokens
                for (ls, lt), row_tokens in zip(pairs[kind], tokens):
                    text = answer_text(tokenizer, row_tokens)
                    rows.append({"query_id": query.query_id, "subset": subset[query.query_id], "position": name,
                                 "kind": kind, "source_layer": ls, "target_layer": lt, "generation": text,
                                 "correct": mentions(text, query.e3_aliases),
                                 "strict": first_entity_match(text, query.e3_aliases),
                                 "same_as_baseline": bool(torch.equal(row_tokens, baseline_tokens)),
                                 "baseline": baseline})
        progress(f"back-patched {done + 1} of {len(chosen)} queries")
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _oracle(frame: pd.DataFrame, queries: list[str], column: str = "correct") -> dict:
    hit = frame.groupby("query_id")[column].any().reindex(queries, fill_value=False)
    return ci(int(hit.sum()), len(queries)) if queries else {"k": 0, "n": 0}


def _pair_rates(frame: pd.DataFrame, queries: list[str], column: str = "correct") -> pd.Series:
    """Per (ℓs, ℓt): the share of ``queries`` the pair gets right."""
    table = frame[frame["query_id"].isin(queries)].pivot_table(
        index="query_id", columns=["source_layer", "target_layer"], values=column, aggfunc="any")
    return table.reindex(queries).fillna(False).astype(float).mean(0)


def best_pair_held_out(frame: pd.DataFrame, queries: list[str], seed: int) -> dict:
    """The best fixed pair chosen on one random half of the queries and scored on the other, both ways:
    a non-oracle rate (pooled successes over the two held-out halves, Wilson CI)."""
    if len(queries) < 2:
        return {"k": 0, "n": 0}
    order = list(np.random.default_rng(seed).permutation(queries))
    halves = (order[:len(order) // 2], order[len(order) // 2:])
    hits = 0
    chosen = []
    for pick, score in (halves, halves[::-1]):
        rates = _pair_rates(frame, pick)
        pair = rates.idxmax()
        chosen.append([int(pair[0]), int(pair[1])])
        scored = _pair_rates(frame[(frame["source_layer"] == pair[0]) & (frame["target_layer"] == pair[1])], score)
        hits += int(round(float(scored.iloc[0]) * len(score)))
    return ci(hits, len(queries)) | {"pairs": chosen}


def per_pair_mean(frame: pd.DataFrame, queries: list[str], n_boot: int, seed: int) -> dict:
    """The mean over pairs of each query's share of successful pairs, with a bootstrap CI over queries."""
    if not queries:
        return {"n": 0}
    shares = frame[frame["query_id"].isin(queries)].groupby("query_id")["correct"].mean().reindex(queries).fillna(0.0)
    c = mean_with_ci(torch.tensor(shares.to_numpy()), n_boot=n_boot, seed=seed)
    return {"n": len(queries), "mean": float(c.mean), "ci_low": float(c.low), "ci_high": float(c.high)}


def backpatch_metrics(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every E5 rate from the long table of :func:`run_backpatching` (or a hand-built one)."""
    out: dict = {}
    for subset in ("incorrect", "correct"):
        rows = table[table["subset"] == subset]
        queries = sorted(rows["query_id"].unique())
        per_subset = {"n_queries": len(queries)}
        for name in sorted(rows["position"].unique()) + ["either"]:
            at = rows if name == "either" else rows[rows["position"] == name]
            back = at[at["kind"] == "back"]
            entry = {"oracle": _oracle(back, queries), "oracle_strict": _oracle(back, queries, "strict"),
                     "per_pair_mean": per_pair_mean(back, queries, n_boot, seed)}
            identity = at[at["kind"] == "identity"]
            if len(identity):
                entry["identity_same_as_baseline"] = ci(int(identity["same_as_baseline"].sum()), len(identity))
            for kind in ("forward", "mismatched"):
                if (at["kind"] == kind).any():
                    entry[f"{kind}_oracle"] = _oracle(at[at["kind"] == kind], queries)
            if name != "either" and len(back):
                rates = _pair_rates(back, queries)
                best = rates.idxmax()
                entry["best_pair_in_sample"] = {"pair": [int(best[0]), int(best[1])], "rate": float(rates.max())}
                entry["best_pair_held_out"] = best_pair_held_out(back, queries, seed)
                gaps = (back.loc[back["correct"], "source_layer"] - back.loc[back["correct"], "target_layer"])
                entry["success_gap"] = {"n": int(len(gaps)), "median": float(gaps.median()) if len(gaps) else None}
            if subset == "correct" and len(back):
                broken = 1.0 - back.groupby("query_id")["correct"].mean().reindex(queries).fillna(0.0)
                c = mean_with_ci(torch.tensor(broken.to_numpy()), n_boot=n_boot, seed=seed)
                entry["break_rate"] = {"n": len(queries), "mean": float(c.mean), "ci_low": float(c.low),
                                       "ci_high": float(c.high)}
            per_subset[name] = entry
        out[subset] = per_subset
    return out


def success_grid(table: pd.DataFrame, n_layers: int, subset: str = "incorrect") -> dict[str, torch.Tensor]:
    """Per position: ``[n_layers, n_layers]`` share of the subset's queries each (ℓs, ℓt) back pair
    gets right (NaN where the pair was not run), for the heatmaps."""
    grids = {}
    rows = table[(table["subset"] == subset) & (table["kind"] == "back")]
    queries = sorted(rows["query_id"].unique())
    for name, at in rows.groupby("position"):
        grid = torch.full((n_layers, n_layers), float("nan"))
        for (ls, lt), rate in _pair_rates(at, queries).items():
            grid[int(ls), int(lt)] = rate
        grids[f"backpatch_{name}"] = grid
    return grids
