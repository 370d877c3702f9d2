"""Study 2's head analyses per chain-of-thought subtask (Dutta et al. 2024 §3.1, 3.3, 3.4, 3.7-3.9),
all through the engine:

* **patching**: each head's output from the clean run written into the corrupted run at every
  position, scored by the normalised KL recovery at the last position (the engine's restart sweep);
* **answer writers**: the per-head logit lens at the last position, ``(p_mid - p_head) / p_mid``;
* **copy scores**: attention from the last position to the target's source word times the head's
  projection onto the target's unembedding;
* **information flow**: the backward trace from the predicted token, the share of traced heads per
  layer that pass an in-context token (the rift), and which prompt segment (few-shot examples, the
  question, the generated chain) the heads feeding the answer writers read.

A subtask's examples are the items whose next word is right given the gold prefix (behaviour's
``subtasks.csv``). Clean and corrupted prompts must have the same length in tokens: where the
corruption's word splits into another number of tokens, the first of its alternatives (same type,
seeded order) that does not is used; pairs with none are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from modules.analysis.generation import encode
from modules.core.params import load, param
from modules.engine.adapters import get_adapter
from modules.engine.metrics import kl_recovery_from_kl, kl_to_clean
from modules.engine.patching import patch_head_sweep
from modules.studies.ontology.data.generator import splice
from modules.studies.ontology.prompts import shot_blocks, shots_text, target_token, test_prompt

SEGMENTS = ("few-shot", "question", "generated")


@dataclass(frozen=True)
class HeadsConfig:
    shots: int = param(6, range=(0, 64))
    subtasks: tuple[int, ...] = param((0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    subtask7: str = param("paper", choices=("paper", "fact"))  # which corruption of the property's copy
    patch_items: int = param(8, range=(1, 10**6))   # per subtask, head patching
    lens_items: int = param(40, range=(1, 10**6))   # per subtask, answer writers, copy scores, sufficiency
    trace_items: int = param(10, range=(0, 10**6))  # per subtask, the information-flow trace
    trace_heads: int = param(4, range=(1, 64))      # the trace's (l, k, p), shrinking by one per depth
    trace_positions: int = param(1, range=(1, 64))
    trace_tokens: int = param(1, range=(1, 64))
    mean_items: int = param(40, range=(1, 10**6))   # false-ontology prompts behind the ablation means
    circuit_fractions: tuple[float, ...] = param((0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0))  # head-set sizes tried
    random_sets: int = param(3, range=(0, 1000))     # random head sets of each size, as a control
    writer_z: float = param(2.0, range=(0.0, 100.0))  # a head whose mean score is this many SDs below the mean writes the answer
    batch_size: int = param(8, range=(1, 4096))
    n_boot: int = param(1000, range=(1, 10**6))
    seed: int = param(0, range=(0, 2**32 - 1))

    threads: int = param(0, range=(0, 1024), optional=True)  # machine setting: torch's intra-op threads (0: as is)

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False) -> "HeadsConfig":
        return load(cls, dict(mapping), "ontology.heads", complete=complete)


@dataclass
class SubtaskExamples:
    subtask: int
    ids: list[str]                  # subtask row ids
    clean: list[list[int]]
    corrupt: list[list[int]]
    target: list[int]               # the target's first sub-token
    source: list[int]               # token position of the target's source word in the input
    segments: list[list[str]]       # per token: few-shot, question, generated (or "" for the template)
    dropped: dict[str, int] = field(default_factory=dict)


def _token_at(offsets: list[tuple[int, int]], char: int) -> int:
    for i, (start, end) in enumerate(offsets):
        if start <= char < end:
            return i
    raise ValueError(f"no token covers character {char}")


def _segments(offsets: list[tuple[int, int]], shots_end: int, input_end: int, response_start: int) -> list[str]:
    out = []
    for start, end in offsets:
        out.append("" if end <= start else "few-shot" if start < shots_end else
                   "question" if start < input_end else "generated" if start >= response_start else "")
    return out


def build_examples(tokenizer, blocks: list[str], items: pd.DataFrame, rows: pd.DataFrame, subtask: int
                   ) -> SubtaskExamples:
    """Token ids of each row's clean and length-matched corrupted prompt, its target and source."""
    items = items.set_index("id")
    prefix_chars = len(shots_text(blocks))
    out = SubtaskExamples(subtask, [], [], [], [], [], [], {"merged": 0, "no_equal_length_corruption": 0})
    for row in rows.itertuples():
        item = items.loc[row.item_id]
        clean_text = test_prompt(blocks, item["input"], row.prefix)
        encoded = tokenizer(clean_text, return_offsets_mapping=True)
        clean = encoded["input_ids"]
        found = target_token(encode(tokenizer, test_prompt(blocks, item["input"], item["answer"])), clean)
        if found is None:
            out.dropped["merged"] += 1
            continue
        original = row.prefix if row.corrupt_segment == "cot" else item["input"]
        corrupt = None
        for word in [row.replacement, *row.alternatives.split()]:
            text = splice(original, row.corrupt_char, row.corrupted_word, word)
            ids = encode(tokenizer, test_prompt(blocks, text, row.prefix) if row.corrupt_segment == "input"
                         else test_prompt(blocks, item["input"], text))
            if len(ids) == len(clean):
                corrupt = ids
                break
        if corrupt is None:
            out.dropped["no_equal_length_corruption"] += 1
            continue
        head = len("### Input:\n")
        input_end = prefix_chars + head + len(item["input"])
        out.ids.append(row.id)
        out.clean.append(clean)
        out.corrupt.append(corrupt)
        out.target.append(found.token)
        out.source.append(_token_at(encoded["offset_mapping"], prefix_chars + head + row.source_char))
        out.segments.append(_segments(encoded["offset_mapping"], prefix_chars, input_end,
                                      input_end + len("\n### Response:\n")))
    return out


def _equal_length_batches(sequences: list[list[int]], batch_size: int):
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        groups.setdefault(len(seq), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


@torch.no_grad()
def _last_logits(model, ids: Tensor) -> Tensor:
    return model(input_ids=ids).logits[:, -1].float()


def patch_subtask(model, examples: SubtaskExamples, batch_size: int) -> tuple[Tensor, Tensor]:
    """KL(P||Q) ``[n]`` and KL(P||R) ``[layers, heads, n]`` for every head's clean output patched
    into the corrupted run at all positions (only positions after the first difference can change)."""
    n = len(examples.ids)
    adapter = get_adapter(model)
    kl_corrupt = torch.zeros(n, dtype=torch.float64)
    kl_patched = torch.zeros(adapter.n_layers, adapter.n_heads, n, dtype=torch.float64)
    for rows in _equal_length_batches(examples.clean, batch_size):
        clean = torch.tensor([examples.clean[i] for i in rows])
        corrupt = torch.tensor([examples.corrupt[i] for i in rows])
        p = _last_logits(model, clean)
        kl_corrupt[rows] = kl_to_clean(_last_logits(model, corrupt), p).double()
        metric = lambda logits: kl_to_clean(logits[:, -1].float(), p)  # noqa: E731
        kl_patched[..., rows] = patch_head_sweep(model, corrupt, clean, metric, site="head_out").double()
    return kl_corrupt, kl_patched


def lens_and_flow(model, examples: SubtaskExamples, config: HeadsConfig) -> dict[str, Tensor]:
    """Per-head lens scores and copy scores ``[layers, heads, n]`` on the clean prompts, and the
    trace's per-layer counts: nodes, nodes passing in-context tokens, and per segment the depth-1
    nodes (the heads that feed the answer writers)."""
    from modules.engine.flow import copy_scores, trace_flow
    from modules.engine.lens import head_lens

    adapter = get_adapter(model)
    n, L, H = len(examples.ids), adapter.n_layers, adapter.n_heads
    out = {"p_mid": torch.zeros(L, n), "p_head": torch.zeros(L, H, n), "copy_attention": torch.zeros(L, H, n),
           "copy_projection": torch.zeros(L, H, n), "trace_nodes": torch.zeros(L), "trace_context": torch.zeros(L),
           "trace_writers": torch.zeros(L), **{f"feeds.{s}": torch.zeros(L, H) for s in SEGMENTS}}
    for rows in _equal_length_batches(examples.clean, config.batch_size):
        ids = torch.tensor([examples.clean[i] for i in rows])
        target = torch.tensor([examples.target[i] for i in rows])
        lens = head_lens(model, ids, target)
        out["p_mid"][:, rows], out["p_head"][..., rows] = lens.p_mid.float(), lens.p_head.float()
        copy = copy_scores(model, ids, [examples.source[i] for i in rows], target)
        out["copy_attention"][..., rows] = copy.attention.float()
        out["copy_projection"][..., rows] = copy.projection.float()
    for i in range(min(n, config.trace_items)):
        nodes = trace_flow(model, torch.tensor([examples.clean[i]]), examples.target[i], top_heads=config.trace_heads,
                           top_positions=config.trace_positions, top_tokens=config.trace_tokens)
        for node in nodes:
            out["trace_nodes"][node.layer] += 1
            out["trace_context"][node.layer] += float(node.in_context)
            if node.depth == 0:
                out["trace_writers"][node.layer] += 1
            if node.depth == 1:
                segment = examples.segments[i][node.key_position]
                if segment:
                    out[f"feeds.{segment}"][node.layer, node.head] += 1
    return out


def run_heads(model, tokenizer, tables: dict[str, pd.DataFrame], behaviour: pd.DataFrame, config: HeadsConfig,
              progress: Callable[[str], None] = lambda m: None) -> tuple[dict, dict[str, Tensor]]:
    """Every subtask's analyses: (summary, tensors keyed ``<name>.s<subtask>``)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    blocks = shot_blocks(tables["shots"], "fictional", config.shots)
    correct = set(behaviour.loc[behaviour["correct"].astype(bool), "item_id"] + "/" +
                  behaviour.loc[behaviour["correct"].astype(bool), "subtask"].astype(str))
    subtasks = tables["subtasks"]
    adapter = get_adapter(model)
    summary: dict = {"n_layers": adapter.n_layers, "n_heads": adapter.n_heads, "subtasks": {}}
    tensors: dict[str, Tensor] = {}
    for s in config.subtasks:
        variant = config.subtask7 if s == 7 else "paper"
        rows = subtasks[(subtasks["subtask"] == s) & (subtasks["variant"] == variant) & (subtasks["ontology"] == "fictional")]
        rows = rows[(rows["item_id"] + "/" + rows["subtask"].astype(str)).isin(correct)]
        examples = build_examples(tokenizer, blocks, tables["items"], rows.head(config.lens_items), s)
        entry = {"variant": variant, "n_correct": len(rows), "n_lens": len(examples.ids), "dropped": examples.dropped}
        if not examples.ids:
            summary["subtasks"][str(s)] = entry | {"n_patch": 0}
            progress(f"subtask {s}: no usable example")
            continue
        progress(f"subtask {s}: {len(examples.ids)} examples; lens, copy scores, trace")
        flow = lens_and_flow(model, examples, config)
        patch = SubtaskExamples(s, examples.ids[:config.patch_items], examples.clean[:config.patch_items],
                                examples.corrupt[:config.patch_items], examples.target[:config.patch_items],
                                examples.source[:config.patch_items], examples.segments[:config.patch_items])
        progress(f"subtask {s}: head patching on {len(patch.ids)} examples")
        kl_corrupt, kl_patched = patch_subtask(model, patch, config.batch_size)
        recovery = kl_recovery_from_kl(kl_corrupt, kl_patched, on_degenerate="nan")
        ci = recovery.ci(config.n_boot, seed=config.seed)
        writer = ((flow["p_mid"][:, None] - flow["p_head"]) / flow["p_mid"][:, None].clamp_min(1e-12)).mean(-1)
        # The paper's ratio explodes where p_mid is near 0 (early layers); the plain difference in
        # probability is reported beside it.
        raised = (flow["p_head"] - flow["p_mid"][:, None]).mean(-1)
        copy = (flow["copy_attention"] * flow["copy_projection"]).mean(-1)
        tensors |= {f"kl_recovery.s{s}": recovery.score.float(), f"kl_recovery_ci_low.s{s}": ci.low.float(),
                    f"kl_recovery_ci_high.s{s}": ci.high.float(), f"kl_corrupt.s{s}": kl_corrupt.float(),
                    f"writer_score.s{s}": writer, f"writer_raise.s{s}": raised, f"copy_score.s{s}": copy,
                    f"copy_attention.s{s}": flow["copy_attention"].mean(-1),
                    **{f"{k}.s{s}": v for k, v in flow.items() if k.startswith(("trace_", "feeds."))}}
        progress(f"subtask {s}: circuit sufficiency")
        entry["sufficiency"] = sufficiency(model, tokenizer, tables, examples, recovery.score, config)
        feeds = {seg: flow[f"feeds.{seg}"] for seg in SEGMENTS}
        depth1 = sum(feeds.values())
        entry["pathways"] = {seg: int(v.sum()) for seg, v in feeds.items()}
        entry["feeders"] = {"n": int(depth1.sum()), "first_half": int(depth1[:adapter.n_layers // 2].sum())}
        entry["writer_layers"] = flow["trace_writers"].int().tolist()
        entry |= {"n_patch": len(patch.ids), "n_trace": min(len(examples.ids), config.trace_items),
                  "kl_corrupt_mean": float(kl_corrupt.mean()),
                  "top_patching": top_heads(recovery.score, ci.low, ci.high),
                  "writers": writers(writer, config.writer_z), "writers_raise": writers(-raised, config.writer_z),
                  "top_copy": top_heads(copy)}
        summary["subtasks"][str(s)] = entry
    summary |= rift_summary(tensors, config.subtasks, adapter.n_layers)
    return summary, tensors


def top_heads(score: Tensor, low: Tensor | None = None, high: Tensor | None = None, k: int = 5) -> list[dict]:
    flat = torch.nan_to_num(score.float(), nan=float("-inf")).flatten()
    out = []
    for index in flat.topk(min(k, flat.numel())).indices.tolist():
        layer, head = divmod(index, score.shape[1])
        entry = {"layer": layer, "head": head, "score": float(score[layer, head])}
        if low is not None:
            entry |= {"ci_low": float(low[layer, head]), "ci_high": float(high[layer, head])}
        out.append(entry)
    return out


def writers(score: Tensor, z: float) -> dict:
    """Heads whose mean lens score lies ``z`` SDs below the mean of all heads (alone they raise the
    answer's probability more than the whole attention layer does), and their layers."""
    mean, sd = score.mean(), score.std()
    chosen = (score < mean - z * sd).nonzero().tolist()
    n_layers = score.shape[0]
    return {"heads": [{"layer": l, "head": h, "score": float(score[l, h])} for l, h in chosen],
            "second_half_share": (sum(l >= n_layers / 2 for l, _ in chosen) / len(chosen)) if chosen else None,
            "mean_relative_layer": (sum(l for l, _ in chosen) / len(chosen) / n_layers) if chosen else None}


def rift_summary(tensors: dict[str, Tensor], subtasks, n_layers: int) -> dict:
    """Pooled over subtasks: per layer the traced heads and the share passing in-context tokens, and
    the rift: the lowest layer from which every layer with traced heads has a share >= 0.5."""
    from modules.engine.flow import ContextShare, rift_layer

    nodes = sum((tensors[f"trace_nodes.s{s}"] for s in subtasks if f"trace_nodes.s{s}" in tensors),
                torch.zeros(n_layers))
    context = sum((tensors[f"trace_context.s{s}"] for s in subtasks if f"trace_context.s{s}" in tensors),
                  torch.zeros(n_layers))
    shares = torch.where(nodes > 0, context / nodes.clamp_min(1), torch.full_like(nodes, float("nan")))
    tensors["trace_nodes"], tensors["trace_context_share"] = nodes, shares
    rift = rift_layer(ContextShare(nodes, shares))
    return {"trace": {"nodes_per_layer": nodes.int().tolist(),
                      "context_share_per_layer": [None if v != v else float(v) for v in shares.tolist()],
                      "rift_layer": rift, "rift_relative_depth": None if rift is None else rift / n_layers}}


def heads_metrics(summary: dict) -> dict[str, float]:
    """The headline numbers, flat, for MLflow and `dvc metrics show`."""
    metrics = {"seconds": float(summary["seconds"])}
    for s, entry in summary["subtasks"].items():
        metrics[f"subtask{s}.n_patch"] = float(entry["n_patch"])
        if entry["n_patch"]:
            metrics[f"subtask{s}.top_kl_recovery"] = entry["top_patching"][0]["score"]
            share = entry["writers"]["second_half_share"]
            if share is not None:
                metrics[f"subtask{s}.writers_second_half"] = float(share)
    rift = summary["trace"]["rift_relative_depth"]
    if rift is not None:
        metrics["rift_relative_depth"] = float(rift)
    return metrics


def heads_figures(summary: dict, tensors: dict[str, Tensor], model_name: str) -> dict[str, object]:
    """Per subtask: the patching, answer-writer and copy-score heatmaps (layer x head); and the
    share of traced heads passing in-context tokens per layer."""
    from matplotlib.figure import Figure

    from modules.engine.tracking import effect_heatmap

    figures = {}
    for s, entry in summary["subtasks"].items():
        if not entry["n_patch"]:
            continue
        for key, what in (("kl_recovery", "patching, normalised KL recovery"),
                          ("writer_score", "answer writers, (p_mid - p_head) / p_mid"),
                          ("writer_raise", "answer writers, p_head - p_mid"),
                          ("copy_score", "copy score")):
            figures[f"{key}_s{s}.png"] = effect_heatmap(tensors[f"{key}.s{s}"], "layer", "head",
                                                        title=f"{model_name}: subtask {s}, {what}")
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    shares = tensors["trace_context_share"].numpy()
    ax.plot(range(len(shares)), shares, marker="o")
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("share passing in-context tokens")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{model_name}: traced heads per layer (all subtasks)")
    fig.tight_layout()
    figures["rift.png"] = fig
    return figures


# ---------------------------------------------------------------- circuit sufficiency (§3.5)

def false_ontology_means(model, tokenizer, tables: dict[str, pd.DataFrame], subtask: int, config: HeadsConfig
                         ) -> dict[int, Tensor]:
    """Each head's mean output over the false-ontology prompts of the same subtask (their own
    solved examples, "Cats are cows."), per position counted from the end of the test block:
    layer -> ``[positions, heads, head_dim]``, as long as the shortest test block."""
    from modules.engine.hooks import Site, capture
    from modules.analysis.generation import encode_rows

    rows = tables["subtasks"]
    rows = rows[(rows["subtask"] == subtask) & (rows["variant"] == "paper") & (rows["ontology"] == "false")]
    rows = rows.head(config.mean_items)
    items = tables["items"].set_index("id")
    blocks = shot_blocks(tables["shots"], "false", config.shots)
    enc = encode_rows(model, tokenizer, [test_prompt(blocks, items.loc[r.item_id, "input"], r.prefix)
                                         for r in rows.itertuples()])
    width = min(len(s) for s in enc.suffixes)
    adapter = get_adapter(model)
    sites = [Site("head_out", layer, positions=tuple(range(-width, 0))) for layer in range(adapter.n_layers)]
    sums: dict[int, Tensor] = {}
    for batch in _equal_length_batches(enc.suffixes, config.batch_size):
        ids = torch.tensor([enc.suffixes[i] for i in batch])
        with capture(model, sites) as acts:
            enc.shared.logits(ids)
        for site in sites:
            total = acts[site].double().sum(0)
            sums[site.layer] = sums[site.layer] + total if site.layer in sums else total
    return {layer: (total / len(enc.suffixes)).float() for layer, total in sums.items()}


@torch.no_grad()
def ablated_argmax(model, shared, suffixes: list[list[int]], ablate: list[tuple[int, int]],
                   means: dict[int, Tensor], batch_size: int) -> Tensor:
    """The last position's argmax with ``ablate`` heads set to their means over the last positions
    of the test block (the few-shot examples, a cached shared prefix, stay as they are)."""
    from modules.engine.hooks import Site, intervene

    width = next(iter(means.values())).shape[0]
    by_layer: dict[int, list[int]] = {}
    for layer, head in ablate:
        by_layer.setdefault(layer, []).append(head)
    out = torch.zeros(len(suffixes), dtype=torch.long)
    for batch in _equal_length_batches(suffixes, batch_size):
        ids = torch.tensor([suffixes[i] for i in batch])
        k = min(width, ids.shape[1])
        edits = {Site("head_out", layer, positions=tuple(range(-k, 0)), heads=tuple(hs)):
                 (lambda act, m=means[layer][-k:, hs]: m.to(act.dtype).expand_as(act))
                 for layer, hs in by_layer.items()}
        with intervene(model, edits):
            out[batch] = shared.logits(ids)[:, -1].argmax(-1)
    return out


def sufficiency(model, tokenizer, tables: dict[str, pd.DataFrame], examples: SubtaskExamples, ranking: Tensor,
                config: HeadsConfig) -> dict:
    """Agreement with the unablated argmax when only the top-k heads of ``ranking`` (patching's KL
    recovery) keep their outputs and every other head is mean-ablated, for k over a grid; the same
    for random head sets of each size. The circuit is the smallest k whose agreement is >= 0.9."""
    from modules.analysis.generation import split_shared

    adapter = get_adapter(model)
    heads = [(layer, h) for layer in range(adapter.n_layers) for h in range(adapter.n_heads)]
    order = [heads[i] for i in torch.nan_to_num(ranking.flatten(), nan=float("-inf")).argsort(descending=True)]
    means = false_ontology_means(model, tokenizer, tables, examples.subtask, config)
    enc = split_shared(model, examples.clean)
    enc = (enc.shared, enc.suffixes)
    reference = ablated_argmax(model, *enc, [], means, config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    sizes = sorted({max(1, round(f * len(heads))) for f in config.circuit_fractions})
    curve = []
    for k in sizes:
        keep = set(order[:k])
        top = (ablated_argmax(model, *enc, [h for h in heads if h not in keep], means, config.batch_size)
               == reference).float().mean()
        random = []
        for _ in range(config.random_sets):
            chosen = set(heads[i] for i in torch.randperm(len(heads), generator=generator)[:k].tolist())
            random.append(float((ablated_argmax(model, *enc, [h for h in heads if h not in chosen], means,
                                                config.batch_size) == reference).float().mean()))
        curve.append({"heads": k, "fraction": k / len(heads), "agreement": float(top),
                      "random_agreement": sum(random) / len(random) if random else None})
    circuit = next((c for c in curve if c["agreement"] >= 0.9), None)
    return {"n": len(examples.ids), "mean_items": config.mean_items, "curve": curve,
            "circuit_heads": circuit["heads"] if circuit else None,
            "circuit_fraction": circuit["fraction"] if circuit else None}
