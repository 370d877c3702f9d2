"""Study 1 on the small model: routing, probes, steering and the planning circuit.

Reproduces the analyses Hong et al. (2024) run on their 3-layer, 3-head model, on the model
the pipeline trains (a standard HF GPT-2, so this is the same engine that runs on 7B models):

* routing attention: what the last prompt position (it predicts the first proof token) attends
  to, per layer and head: the query variable, the queried rule's conclusion (the query variable
  where a rule concludes it), the rules section, the facts section;
* linear probes on cached residual activations for the queried chain, the linear chain's source
  variable and the LogOp sources' truth values;
* the routing direction (linear minus LogOp queries, difference of means, and the probe's
  weight) and steering along it, against random directions of the same norm;
* patching with query-flip pairs (residual stream by layer x position, heads), per-head mean
  ablation to name the planning circuit, and the circuit's sufficiency.

Flip-pair conventions (the logit difference, patching effects, kept shares) are those of
:mod:`modules.studies.logic.llm` and docs/logic/llm.md, whose functions this module reuses on
compact prompts; docs/logic/circuit.md lists what each number means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from modules.core.params import load, param
from modules.analysis.pairs import (PairExamples, StudyError, ablated_ld, behaviour, ci_dict, first_token_ld,
                                    head_means, head_patching, kept_share, model_device, patching_effects)
from modules.studies.logic.llm import DIRECTIONS
from modules.engine import Site, capture, get_adapter, patch_resid_sweep, steer
from modules.engine.metrics import mean_with_ci, wilson_ci
from modules.engine.probes import probe_grid, split_indices

SECTIONS = ("query", "conclusion", "rules", "facts")
# linear_source_linear_queries: the paper's probe, on linear-query problems only (-1 labels the rows it skips)
PROBE_TARGETS = ("queried_chain", "linear_source", "linear_source_linear_queries", "logop_value_a", "logop_value_b")


def _ci(entry) -> dict[str, float]:
    return ci_dict(entry.mean, entry.low, entry.high)


# ---------------------------------------------------------------- compact prompts

def _keyword_positions(ids: Tensor, tokenizer, word: str) -> Tensor:
    """[n] position of ``word`` in each row (every compact prompt has it exactly once)."""
    hits = ids == tokenizer.convert_tokens_to_ids(word)
    if not bool((hits.sum(1) == 1).all()):
        raise StudyError(f"every compact prompt needs exactly one {word!r} token")
    return hits.int().argmax(1)


def encode_prompts(prompts: Sequence[str], tokenizer) -> Tensor:
    """[n, seq] token ids of equal-length compact prompts (one depth)."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if len({len(r) for r in rows}) != 1:
        raise StudyError("compact prompts differ in length (mixed depths?); analyse one depth at a time")
    return torch.tensor(rows, dtype=torch.long)


def position_names(prompt_ids: Tensor, positions: Sequence[int], tokenizer) -> list[str]:
    """Names of cached positions in a compact prompt: ``query`` for the query variable,
    ``query_keyword`` for the word before it, else the token itself (``answer``)."""
    tokens = tokenizer.convert_ids_to_tokens(prompt_ids.tolist())
    names = []
    for position in positions:
        token, before = tokens[position], tokens[position - 1] if position % len(tokens) else ""
        names.append("query" if before == "query" else "query_keyword" if token == "query" else token)
    return names


def cached_residuals(cache: Mapping[str, Tensor], positions: Sequence[int], prompt_ids: Tensor,
                     tokenizer) -> dict[tuple[int, str], Tensor]:
    """``{(layer, position name): [n, d]}`` from an activation cache of ``resid_post.<layer>``
    tensors ``[n, len(positions), d]`` (what the cache_logic_activations stage writes)."""
    names = position_names(prompt_ids, positions, tokenizer)
    layers = sorted(int(key.split(".")[1]) for key in cache if key.startswith("resid_post."))
    if not layers:
        raise StudyError("the activation cache holds no resid_post site")
    out = {}
    for layer in layers:
        values = cache[f"resid_post.{layer}"]
        out |= {(layer, name): values[:, j] for j, name in enumerate(names)}
    return out


def compact_examples(pairs: pd.DataFrame, tokenizer) -> PairExamples:
    """Both directions of every compact flip pair, as the LLM study's :class:`Examples`: the clean
    prompt queries ``direction``, the flipped one the other chain; positions by token index."""
    rows: dict[str, list] = {k: [] for k in ("ids", "answer", "correct", "wrong", "pair", "direction")}
    eos = tokenizer.eos_token_id
    for row in pairs.itertuples(index=False):
        for direction in DIRECTIONS:
            other = DIRECTIONS[1 - DIRECTIONS.index(direction)]
            answer = tokenizer(getattr(row, f"answer_{direction}"), add_special_tokens=False)["input_ids"]
            wrong = tokenizer(getattr(row, f"answer_{other}"), add_special_tokens=False)["input_ids"]
            rows["ids"].append(getattr(row, f"prompt_{direction}"))
            rows["answer"].append(torch.tensor(answer + [eos]))
            rows["correct"].append(answer[0])
            rows["wrong"].append(wrong[0])
            rows["pair"].append(row.pair_id)
            rows["direction"].append(direction)
    if not rows["ids"]:
        raise StudyError("no flip pairs to analyse")
    ids = encode_prompts(rows["ids"], tokenizer)
    flip = ids.view(-1, len(DIRECTIONS), ids.shape[1]).flip(1).reshape(ids.shape)  # a pair's other direction
    facts = _keyword_positions(ids, tokenizer, "facts")
    query = _keyword_positions(ids, tokenizer, "query") + 1
    return PairExamples(list(ids), list(flip), rows["answer"], torch.tensor(rows["correct"]),
                        torch.tensor(rows["wrong"]), query, rows["direction"], rows["pair"],
                        {"query": query, "facts": torch.stack([facts + 1, query - 1], 1)})


# ---------------------------------------------------------------- 1. routing attention

def queried_conclusion_positions(ids: Tensor, tokenizer) -> Tensor:
    """[n] position of the queried rule's conclusion: the query variable right after ``>`` in the
    rules (the query is a chain's last variable, so exactly one rule concludes it)."""
    query = ids.gather(1, (_keyword_positions(ids, tokenizer, "query") + 1)[:, None])
    after_arrow = torch.zeros_like(ids, dtype=torch.bool)
    after_arrow[:, 1:] = ids[:, :-1] == tokenizer.convert_tokens_to_ids(">")
    hits = (ids == query) & after_arrow
    if not bool((hits.sum(1) == 1).all()):
        raise StudyError("every compact prompt needs exactly one rule that concludes its query variable")
    return hits.int().argmax(1)


@torch.no_grad()
def section_attention(model, tokenizer, ids: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """Attention from the last prompt position, ``[n, n_layers, n_heads]`` per section: the query
    variable, the queried rule's conclusion, the rules section (between ``rules`` and ``facts``,
    the conclusion included) and the facts section."""
    adapter, device = get_adapter(model), model_device(model)
    facts = _keyword_positions(ids, tokenizer, "facts")
    query_kw = _keyword_positions(ids, tokenizer, "query")
    rules_kw = _keyword_positions(ids, tokenizer, "rules")
    pos = torch.arange(ids.shape[1])
    masks = {"query": pos == (query_kw + 1)[:, None],
             "conclusion": pos == queried_conclusion_positions(ids, tokenizer)[:, None],
             "rules": (pos > rules_kw[:, None]) & (pos < facts[:, None]),
             "facts": (pos > facts[:, None]) & (pos < query_kw[:, None])}
    sites = [Site("pattern", layer, positions=(-1,)) for layer in range(adapter.n_layers)]
    out = {name: torch.zeros(len(ids), adapter.n_layers, adapter.n_heads) for name in SECTIONS}
    for start in range(0, len(ids), batch_size):
        rows = slice(start, start + batch_size)
        with capture(model, sites) as acts:
            model(input_ids=ids[rows].to(device))
        weights = torch.stack([acts[s][:, :, 0].float().cpu() for s in sites], dim=1)  # [b, L, H, seq]
        for name, mask in masks.items():
            out[name][rows] = (weights * mask[rows, None, None, :]).sum(-1)
    return out


def routing_summary(attention: Mapping[str, Tensor], chains: Sequence[str], n_boot: int = 1000,
                    seed: int = 0) -> tuple[dict, dict[str, Tensor]]:
    """Mean attention per (layer, head) with CIs, per queried chain; and the last layer's head
    that separates the chains most on the query (the paper's routing head), and on the queried
    rule's conclusion."""
    chains = np.asarray(chains)
    summary: dict = {"n": {c: int((chains == c).sum()) for c in DIRECTIONS}}
    tensors: dict[str, Tensor] = {}
    for name, values in attention.items():
        ci = mean_with_ci(values, n_boot=n_boot, seed=seed)
        tensors |= {f"attention.{name}.all": ci.mean.float(), f"attention_ci_low.{name}.all": ci.low.float(),
                    f"attention_ci_high.{name}.all": ci.high.float()}
        for chain in DIRECTIONS:
            if not (chains == chain).any():
                raise StudyError(f"no test problem queries the {chain} chain; attention cannot be split")
            ci = mean_with_ci(values[torch.from_numpy(chains == chain)], n_boot=n_boot, seed=seed)
            tensors |= {f"attention.{name}.{chain}": ci.mean.float(), f"attention_ci_low.{name}.{chain}": ci.low.float(),
                        f"attention_ci_high.{name}.{chain}": ci.high.float()}
    n_layers, n_heads = tensors["attention.query.all"].shape
    summary["sections"] = [{"layer": layer, "head": head, **{name: float(tensors[f"attention.{name}.all"][layer, head])
                                                             for name in attention}}
                           for layer in range(n_layers) for head in range(n_heads)]
    last = n_layers - 1

    def routing_head(target: str) -> dict:
        gap = tensors[f"attention.{target}.linear"][last] - tensors[f"attention.{target}.logop"][last]
        head = int(gap.argmax())
        return {"layer": last, "head": head, **{
            chain: {"mean": float(tensors[f"attention.{target}.{chain}"][last, head]),
                    "ci_low": float(tensors[f"attention_ci_low.{target}.{chain}"][last, head]),
                    "ci_high": float(tensors[f"attention_ci_high.{target}.{chain}"][last, head])}
            for chain in DIRECTIONS}}

    # a prompt that ends at the query variable can only route through the rule that concludes it
    summary["routing_head"], summary["conclusion_head"] = routing_head("query"), routing_head("conclusion")
    return summary, tensors


# ---------------------------------------------------------------- 2. probes

def probe_labels(frame: pd.DataFrame) -> dict[str, Tensor]:
    """Class ids per probe target: queried chain (1 = linear), the linear chain's source letter
    (A=0 .. Z=25; on every problem, and on linear-query problems only as the paper probes it, -1
    elsewhere), and the truth value of each LogOp source (as the data's columns name them)."""
    letters = torch.tensor(frame["linear_source"].map(lambda v: ord(v) - ord("A")).to_numpy(), dtype=torch.long)
    linear = torch.tensor((frame["query_chain"] == "linear").to_numpy())
    return {"queried_chain": linear.long(),
            "linear_source": letters,
            "linear_source_linear_queries": torch.where(linear, letters, torch.tensor(-1)),
            "logop_value_a": torch.tensor(frame["logop_value_a"].to_numpy(), dtype=torch.long),
            "logop_value_b": torch.tensor(frame["logop_value_b"].to_numpy(), dtype=torch.long)}


def run_probes(activations: Mapping[tuple[int, str], Tensor], labels: Mapping[str, Tensor], epochs: int = 200,
               seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A linear probe per (target, layer, position), on the rows whose label is not -1: test
    accuracy with its Wilson CI, and the majority-class rate of the test labels as the floor a probe
    must beat. Returns the table and the unit directions of the queried-chain probes."""
    tables, directions = [], {}
    for target in PROBE_TARGETS:
        rows = labels[target] >= 0
        y = labels[target][rows]
        held_out = y[split_indices(y, seed=seed)[1]]  # the split train_probes scores on
        if not len(held_out):
            raise StudyError(f"the {target.replace('_', ' ')} probe has {len(y)} problems, too few to hold "
                             "any out: raise logic.activations.n_examples")
        grid = probe_grid({site: x[rows] for site, x in activations.items()}, y, epochs=epochs, seed=seed)
        majority = float(torch.bincount(held_out).max()) / len(held_out)
        tables.append(grid.table.assign(target=target, majority=majority))
        if target == "queried_chain" and grid.directions:
            directions = grid.directions
    table = pd.concat(tables, ignore_index=True)
    return table[["target", "layer", "position", "accuracy", "ci_low", "ci_high", "majority",
                  "train_accuracy", "n_test"]], directions


# ---------------------------------------------------------------- 3. routing direction and steering

def routing_direction(activations: Tensor, is_linear: Tensor) -> Tensor:
    """Mean activation of linear-query problems minus that of LogOp-query ones: ``[d]``."""
    is_linear = is_linear.bool()
    if is_linear.all() or not is_linear.any():
        raise StudyError("the routing direction needs problems of both query chains")
    return activations[is_linear].float().mean(0) - activations[~is_linear].float().mean(0)


@torch.no_grad()
def steered_first_tokens(model, examples: PairExamples, layer: int, direction: Tensor,
                         batch_size: int = 500) -> Tensor:
    """Greedy first proof token with ``direction`` added at the query variable's residual stream
    after ``layer`` on LogOp-query examples, and subtracted on linear-query ones: ``[n]``."""
    device, out = model_device(model), torch.zeros(len(examples), dtype=torch.long)
    sign = torch.tensor([1.0 if d == "logop" else -1.0 for d in examples.group])
    for index in examples.batches(batch_size):
        for value in (1.0, -1.0):
            rows = [i for i in index if float(sign[i]) == value]
            if not rows:
                continue
            position = int(examples.positions["query"][rows[0]])
            with steer(model, Site("resid_post", layer, positions=(position,)), value * direction):
                logits = model(input_ids=examples.stack(rows).to(device)).logits[:, -1]
            out[rows] = logits.argmax(-1).cpu()
    return out


def steering_summary(model, examples: PairExamples, layer: int, directions: Mapping[str, Tensor],
                     n_random: int = 10, batch_size: int = 500, seed: int = 0) -> dict:
    """Share of (solved) examples whose first proof token flips to the other chain's start, per
    direction, with Wilson CIs; random directions of the routing direction's norm as the control."""
    def flips(direction: Tensor) -> tuple[int, int]:
        tokens = steered_first_tokens(model, examples, layer, direction, batch_size)
        return int((tokens == examples.wrong).sum()), int((tokens == examples.correct).sum())

    n, norm = len(examples), float(directions["difference_of_means"].norm())
    summary: dict = {"n": n}
    for name, direction in directions.items():
        flipped, kept = flips(direction.float() / direction.norm() * norm)
        summary[name] = {"flip": _ci(wilson_ci(flipped, n)), "still_correct": _ci(wilson_ci(kept, n))}
    generator = torch.Generator().manual_seed(seed)
    counts = []
    for _ in range(n_random):
        direction = torch.randn(directions["difference_of_means"].shape, generator=generator)
        counts.append(flips(direction / direction.norm() * norm))
    if counts:
        flipped = sum(c[0] for c in counts)
        summary["random"] = {"n_directions": n_random, "flip": _ci(wilson_ci(flipped, n * n_random)),
                             "flip_max": max(c[0] for c in counts) / n,
                             "still_correct": _ci(wilson_ci(sum(c[1] for c in counts), n * n_random))}
    return summary


# ---------------------------------------------------------------- 4. patching and the circuit

@torch.no_grad()
def resid_patching(model, examples: PairExamples, batch_size: int = 500) -> Tensor:
    """Patched LD for the residual stream entering each layer at each position, flipped -> clean:
    ``[n_layers, seq, n]``."""
    device, parts, order = model_device(model), [], []
    for index in examples.batches(batch_size):
        correct, wrong = examples.correct[index].to(device), examples.wrong[index].to(device)
        parts.append(patch_resid_sweep(model, examples.stack(index).to(device),
                                       examples.stack(index, flipped=True).to(device),
                                       lambda logits, c=correct, w=wrong: first_token_ld(logits, c, w),
                                       max_rows=max(4096, len(index))).float().cpu())
        order += index
    return torch.cat(parts, dim=-1)[..., torch.argsort(torch.tensor(order))]


def planning_circuit(model, examples: PairExamples, ld_clean: Tensor, break_share: float, n_boot: int = 1000,
                     seed: int = 0, batch_size: int = 500, random_controls: int = 5) -> dict:
    """Mean-ablate each head at the question's positions; the heads that leave less than
    ``break_share`` of the clean logit difference form the circuit. Sufficiency keeps only them
    (every other head mean-ablated); the control keeps as many random heads from outside it instead."""
    adapter = get_adapter(model)
    means = head_means(model, examples, batch_size)
    share = lambda heads: kept_share(ablated_ld(model, examples, heads, means, batch_size),  # noqa: E731
                                     ld_clean, n_boot, seed)
    heads = [(layer, h) for layer in range(adapter.n_layers) for h in range(adapter.n_heads)]
    single = {head: share([head]) for head in heads}
    circuit = [head for head in heads if single[head]["mean"] < break_share]
    summary: dict = {"break_share": break_share,
                     "single_head": [{"layer": l, "head": h, **single[(l, h)]} for l, h in heads],
                     "circuit": [{"layer": l, "head": h} for l, h in circuit]}
    if circuit:
        others = [head for head in heads if head not in set(circuit)]
        summary["necessity"] = share(circuit)
        summary["sufficiency"] = share(others)
        rng = np.random.default_rng(seed)
        controls = []
        for _ in range(random_controls if others else 0):  # never the circuit itself
            kept = {others[i] for i in rng.choice(len(others), min(len(circuit), len(others)), replace=False)}
            controls.append(share([head for head in heads if head not in kept])["mean"])
        if controls:
            summary["random_control"] = {"n_sets": len(controls), "mean": float(np.mean(controls)),
                                         "min": float(min(controls)), "max": float(max(controls))}
    return summary


# ---------------------------------------------------------------- the whole analysis

@dataclass(frozen=True)
class CircuitConfig:
    n_problems: int = param(1000, range=(1, 10**8))      # test problems for the attention statistics
    probe_epochs: int = param(200, range=(1, 10**6))
    routing_layer: int = param(1, range=(0, 10**3))      # 0-based; the paper's "layer 2"
    break_share: float = param(0.5, range=(1e-9, 1.0))   # a head is in the circuit when its ablation keeps less than this
    random_directions: int = param(10, range=(0, 10**4))
    random_controls: int = param(5, range=(0, 10**4))
    batch_size: int = param(500, range=(1, 1 << 20))
    n_boot: int = param(1000, range=(1, 10**7))
    seed: int = param(0, range=(0, 2**32 - 1))

    @classmethod
    def from_mapping(cls, params: Mapping, complete: bool = False) -> "CircuitConfig":
        return load(cls, dict(params), "logic.analysis", complete=complete)


@dataclass
class CircuitResult:
    summary: dict
    tensors: dict[str, Tensor]
    probes: pd.DataFrame


def run_circuit_study(model, tokenizer, test: pd.DataFrame, pairs: pd.DataFrame,
                      activations: Mapping[tuple[int, str], Tensor], activation_rows: Sequence[int],
                      config: CircuitConfig = CircuitConfig(),
                      progress: Callable[[str], None] = lambda message: None) -> CircuitResult:
    """All four analyses. ``activations`` maps (layer, position name) to cached residual streams
    ``[n, d]`` (the output of each layer) of the test rows ``activation_rows``; position names
    are ``query`` (the query variable) and ``answer`` (the last prompt token), others optional."""
    adapter = get_adapter(model)
    if not 0 <= config.routing_layer < adapter.n_layers:
        raise StudyError(f"logic.analysis.routing_layer must be in [0, {adapter.n_layers - 1}], "
                         f"got {config.routing_layer}")
    if (config.routing_layer, "query") not in activations:
        raise StudyError(f"the activation cache has no layer-{config.routing_layer} output at the query variable")
    summary: dict = {"n_layers": adapter.n_layers, "n_heads": adapter.n_heads}
    tensors: dict[str, Tensor] = {}

    progress("routing attention")
    problems = test.head(config.n_problems)
    attention = section_attention(model, tokenizer, encode_prompts(problems["prompt"].tolist(), tokenizer),
                                  config.batch_size)
    summary["attention"], attention_tensors = routing_summary(attention, problems["query_chain"].tolist(),
                                                              config.n_boot, config.seed)
    tensors |= attention_tensors

    progress("probes")
    probed = test.iloc[list(activation_rows)]
    labels = probe_labels(probed)
    probes, probe_directions = run_probes(activations, labels, config.probe_epochs, config.seed)
    summary["probes"] = {"n": len(probed), "best": {
        target: probes[probes.target == target].sort_values("accuracy", ascending=False).iloc[0][
            ["layer", "position", "accuracy", "ci_low", "ci_high", "majority"]].to_dict()
        for target in PROBE_TARGETS}}

    progress("flip pairs: behaviour")
    examples = compact_examples(pairs, tokenizer)
    result = behaviour(model, examples, config.batch_size)
    direction = np.array(examples.group)
    summary["flip_pairs"] = {"n_pairs": len(pairs), "n_examples": len(examples), **{
        f"first_token_{d}": _ci(wilson_ci(int(result["first_ok"][direction == d].sum()), int((direction == d).sum())))
        for d in DIRECTIONS}}
    # Steering and patching need a decision to move: pairs solved in both directions only
    unsolved = {p for p, ok in zip(examples.pair_id, result["first_ok"].tolist()) if not ok}
    keep = [i for i, p in enumerate(examples.pair_id) if p not in unsolved]
    summary["flip_pairs"]["n_solved_examples"] = len(keep)

    progress("routing direction")
    layer = config.routing_layer
    difference = routing_direction(activations[(layer, "query")], labels["queried_chain"])
    tensors["routing_direction"] = difference
    candidates = {"difference_of_means": difference}
    if (layer, "query") in probe_directions:
        probe = probe_directions[(layer, "query")]
        candidates["probe_weight"] = probe * torch.sign(probe @ difference)  # pointing at linear queries
    summary["routing_direction"] = {"layer": layer, "norm": float(difference.norm()), "cosine_probe_difference": (
        float(torch.nn.functional.cosine_similarity(candidates["probe_weight"], difference, dim=0))
        if "probe_weight" in candidates else None)}
    if not keep:
        summary["skipped"] = ("the model solves no flip pair in both query directions, so there is no decision "
                              "for steering or patching to move")
        progress(summary["skipped"])
        return CircuitResult(summary, tensors, probes)
    examples = examples.subset(keep)
    ld_clean, ld_flip = result["ld_clean"][keep], result["ld_flip"][keep]
    tensors |= {"ld_clean": ld_clean, "ld_flip": ld_flip}

    progress("steering")
    summary["steering"] = steering_summary(model, examples, layer, candidates, config.random_directions,
                                           config.batch_size, config.seed)

    progress("patching: residual stream")
    summary["patching_tokens"] = tokenizer.convert_ids_to_tokens(examples.ids[0].tolist())  # the figure's axis
    patched = resid_patching(model, examples, config.batch_size)
    mean, low, high = patching_effects(patched, ld_clean, ld_flip, config.n_boot, config.seed)
    tensors |= {"patched_ld.resid_pre": patched, "effect.resid_pre": mean, "effect_ci_low.resid_pre": low,
                "effect_ci_high.resid_pre": high}
    progress("patching: heads")
    patched = head_patching(model, examples, "head_out", config.batch_size)
    mean, low, high = patching_effects(patched, ld_clean, ld_flip, config.n_boot, config.seed)
    tensors |= {"patched_ld.head_out": patched, "effect.head_out": mean, "effect_ci_low.head_out": low,
                "effect_ci_high.head_out": high}
    progress("circuit: ablations")
    summary["circuit"] = planning_circuit(model, examples, ld_clean, config.break_share, config.n_boot,
                                          config.seed, config.batch_size, config.random_controls)
    return CircuitResult(summary, tensors, probes)
