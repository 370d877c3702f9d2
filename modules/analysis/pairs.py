"""Counterfactual prompt pairs and what every study measures on them.

A pair is a clean prompt and a corrupted one of the same length that differ from position
``diverge`` on, plus the clean answer's tokens. The logit difference
LD = logit(correct) - logit(wrong) at the last prompt position is positive on a clean prompt that
the model answers right. On top of that, the generic measurements:

* head patching: the corrupted run's head (or q/k/v) activation written into the clean run at
  every position from ``diverge`` on, one cell per (layer, head);
* a patching effect, mean(LD_patched - LD_clean) / mean(LD_corrupt - LD_clean): 0 = the patch
  changes nothing, 1 = the patched run decides like the corrupted prompt;
* mean ablation of head sets, and the share mean(LD_ablated) / mean(LD_clean) it keeps;
* circuit selection by patching effect, and random head sets of the circuit's size as a control.

Ratios of means are used (not means of per-example ratios), with a bootstrap CI over examples.
Study-specific landmarks (a query token, a rule's conclusion, ...) travel in ``positions``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from modules.engine import Site, capture, get_adapter, intervene, patch_head_sweep
from modules.engine.metrics import ratio_of_means_ci
from modules.engine.patchscope import generate_greedy

HEAD_SITES = ("head_out", "q", "k", "v")
Head = tuple[int, int]


class StudyError(ValueError):
    """Bad study input (no usable example, a tokenizer without offsets); one-line message."""


@dataclass
class PairExamples:
    """Tokenised pairs; positions index the clean prompt's tokens."""
    ids: list[Tensor]                 # clean prompt ids, [seq] each
    flip_ids: list[Tensor]            # the corrupted prompt, same length
    answer_ids: list[Tensor]          # the clean answer's tokens
    correct: Tensor                   # [n] first token of the clean answer
    wrong: Tensor                     # [n] first token of the corrupted prompt's answer
    diverge: Tensor                   # [n] first position where the two prompts may differ
    group: list[str]                  # a label per example (the query direction, the subtask, ...)
    pair_id: list[str]
    positions: dict[str, Tensor] = field(default_factory=dict)  # study landmarks, [n] or [n, 2] spans
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def suffix(self) -> int:
        """Tokens from ``diverge`` to the end: the only positions where a pair differs."""
        return int(len(self.ids[0]) - self.diverge[0])

    def subset(self, keep: Sequence[int]) -> "PairExamples":
        keep = list(keep)
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        index = torch.tensor(keep, dtype=torch.long)
        return PairExamples(pick(self.ids), pick(self.flip_ids), pick(self.answer_ids), self.correct[index],
                            self.wrong[index], self.diverge[index], pick(self.group), pick(self.pair_id),
                            {k: v[index] for k, v in self.positions.items()}, dict(self.dropped))

    def batches(self, batch_size: int, among: Sequence[int] | None = None):
        """Index lists of same-length examples (no padding anywhere), at most batch_size each;
        ``among``: only these examples."""
        by_length: dict[int, list[int]] = {}
        for i in range(len(self.ids)) if among is None else among:
            by_length.setdefault(len(self.ids[i]), []).append(i)
        for length in sorted(by_length):
            members = by_length[length]
            for start in range(0, len(members), batch_size):
                yield members[start:start + batch_size]

    def stack(self, index: list[int], flipped: bool = False) -> Tensor:
        return torch.stack([(self.flip_ids if flipped else self.ids)[i] for i in index])

    def twins(self) -> dict[int, int]:
        """i -> j where example j's clean prompt is example i's corrupted one and their first answer
        tokens are swapped (the two directions of a flip pair): i's corrupted run is j's clean run."""
        clean = {ids.numpy().tobytes(): j for j, ids in enumerate(self.ids)}
        found = {}
        for i, flip in enumerate(self.flip_ids):
            j = clean.get(flip.numpy().tobytes())
            if j is not None and self.correct[j] == self.wrong[i] and self.wrong[j] == self.correct[i]:
                found[i] = j
        return found


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def ci_dict(mean: float, low: float, high: float) -> dict[str, float]:
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high)}


def first_token_ld(logits: Tensor, correct: Tensor, wrong: Tensor) -> Tensor:
    """[batch, vocab] (or [batch, 1, vocab]) -> [batch] logit difference, in float32."""
    logits = logits.reshape(len(correct), -1).float()
    rows = torch.arange(len(correct), device=logits.device)
    return logits[rows, correct.to(logits.device)] - logits[rows, wrong.to(logits.device)]


@torch.no_grad()
def behaviour(model, examples: PairExamples, batch_size: int = 8) -> dict[str, Tensor]:
    """Greedy decoding of the clean prompts and the logit differences on both prompts:
    ``first_ok``, ``proof_ok`` (bool [n]: the first / every answer token right), ``ld_clean``,
    ``ld_flip`` (float [n]). An example whose corrupted prompt is another's clean one (its twin)
    takes ``ld_flip`` from the twin's run, -ld_clean[twin], instead of running that prompt again."""
    n, device = len(examples), model_device(model)
    out = {"first_ok": torch.zeros(n, dtype=torch.bool), "proof_ok": torch.zeros(n, dtype=torch.bool),
           "ld_clean": torch.zeros(n), "ld_flip": torch.zeros(n)}
    for index in examples.batches(batch_size):
        answers = [examples.answer_ids[i] for i in index]
        generation = generate_greedy(model, examples.stack(index).to(device), max(len(a) for a in answers))
        tokens = generation.tokens.cpu()
        correct, wrong = examples.correct[index], examples.wrong[index]
        out["first_ok"][index] = tokens[:, 0] == correct
        out["proof_ok"][index] = torch.tensor([bool((t[:len(a)] == a).all()) for t, a in zip(tokens, answers)])
        out["ld_clean"][index] = first_token_ld(generation.logits[:, 0], correct, wrong).cpu()
    twins = examples.twins()
    for i, j in twins.items():
        out["ld_flip"][i] = -out["ld_clean"][j]
    for index in examples.batches(batch_size, among=[i for i in range(n) if i not in twins]):
        flip_logits = model(input_ids=examples.stack(index, flipped=True).to(device)).logits[:, -1]
        out["ld_flip"][index] = first_token_ld(flip_logits, examples.correct[index], examples.wrong[index]).cpu()
    return out


# ---------------------------------------------------------------- head patching

@torch.no_grad()
def head_patching(model, examples: PairExamples, site: str = "head_out", batch_size: int = 8,
                  max_rows: int = 512) -> Tensor:
    """Patched LD for every (layer, head) of ``site``: ``[n_layers, n_heads, n]``. Each cell
    writes the corrupted run's activation into the clean run at every position from ``diverge`` on."""
    if site not in HEAD_SITES:
        raise StudyError(f"site must be one of {', '.join(HEAD_SITES)}, got {site!r}")
    device, positions = model_device(model), list(range(-examples.suffix, 0))
    parts, order = [], []
    for index in examples.batches(batch_size):
        correct, wrong = examples.correct[index].to(device), examples.wrong[index].to(device)
        metric = lambda logits, c=correct, w=wrong: first_token_ld(logits, c, w)  # noqa: E731
        parts.append(patch_head_sweep(model, examples.stack(index).to(device),
                                      examples.stack(index, flipped=True).to(device), metric, site=site,
                                      positions=positions, max_rows=max(max_rows, len(index))).float().cpu())
        order += index
    values = torch.cat(parts, dim=-1)
    return values[..., torch.argsort(torch.tensor(order))]


def patching_effects(patched: Tensor, ld_clean: Tensor, ld_flip: Tensor, n_boot: int = 1000,
                     seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """mean(patched - clean) / mean(flip - clean) per cell, with its bootstrap CI."""
    numerator = (patched - ld_clean).movedim(-1, 0)
    denominator = (ld_flip - ld_clean)[:, None].expand(-1, numerator[0].numel()).reshape(numerator.shape)
    ci = ratio_of_means_ci(numerator, denominator, n_boot=n_boot, seed=seed)
    return ci.mean.float(), ci.low.float(), ci.high.float()


def select_circuit(effects: Tensor, min_effect: float, max_heads: int) -> list[Head]:
    """The heads whose output patching effect is at least ``min_effect``, strongest first."""
    flat = effects.flatten()
    order = flat.argsort(descending=True, stable=True)[:max_heads]
    n_heads = effects.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order if float(flat[i]) >= min_effect]


def top_cells(mean: Tensor, low: Tensor, high: Tensor, k: int = 10) -> list[dict]:
    """The ``k`` (layer, head) cells of largest absolute effect, with their CIs."""
    order = mean.flatten().abs().argsort(descending=True, stable=True)[:k]
    n_heads = mean.shape[1]
    return [{"layer": int(i) // n_heads, "head": int(i) % n_heads,
             **ci_dict(mean.flatten()[i], low.flatten()[i], high.flatten()[i])} for i in order]


# ---------------------------------------------------------------- mean ablation

@torch.no_grad()
def head_means(model, examples: PairExamples, batch_size: int = 8) -> dict[int, Tensor]:
    """Mean head output over clean and corrupted prompts at the positions from ``diverge`` on:
    layer -> ``[suffix, n_heads, head_dim]``."""
    adapter, device = get_adapter(model), model_device(model)
    positions = tuple(range(-examples.suffix, 0))
    sites = [Site("head_out", layer, positions=positions) for layer in range(adapter.n_layers)]
    sums: dict[int, Tensor] = {}
    count = 0
    for index in examples.batches(batch_size):
        for flipped in (False, True):
            with capture(model, sites) as acts:
                model(input_ids=examples.stack(index, flipped).to(device))
            for site in sites:
                total = acts[site].double().sum(0)
                sums[site.layer] = sums[site.layer] + total if site.layer in sums else total
            count += len(index)
    return {layer: (total / count) for layer, total in sums.items()}


@torch.no_grad()
def ablated_ld(model, examples: PairExamples, heads: Sequence[Head], means: Mapping[int, Tensor],
               batch_size: int = 8) -> Tensor:
    """Clean-prompt LD with ``heads`` mean-ablated at the positions from ``diverge`` on: ``[n]``."""
    device, positions = model_device(model), tuple(range(-examples.suffix, 0))
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    edits: dict[Site, Callable] = {}
    for layer, hs in by_layer.items():
        mean = means[layer][:, hs]
        edits[Site("head_out", layer, positions=positions, heads=tuple(hs))] = \
            lambda act, m=mean: m.to(act.dtype).to(act.device).expand_as(act)
    out = torch.zeros(len(examples))
    for index in examples.batches(batch_size):
        with intervene(model, edits):
            logits = model(input_ids=examples.stack(index).to(device)).logits[:, -1]
        out[index] = first_token_ld(logits, examples.correct[index], examples.wrong[index]).cpu()
    return out


def kept_share(ld: Tensor, ld_clean: Tensor, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """mean(ld) / mean(ld_clean) with its bootstrap CI, as a plain dict."""
    ci = ratio_of_means_ci(ld[:, None], ld_clean[:, None], n_boot=n_boot, seed=seed)
    return {"mean": float(ci.mean[0]), "ci_low": float(ci.low[0]), "ci_high": float(ci.high[0])}


def random_head_controls(share: Callable[[list[Head]], dict], circuit: Sequence[Head], all_heads: Sequence[Head],
                         n_sets: int, seed: int = 0) -> dict | None:
    """``share`` of ``n_sets`` random head sets of the circuit's size drawn outside it: the kept
    share a circuit must beat. None when no head lies outside the circuit or no set is asked for."""
    others = [c for c in all_heads if c not in set(circuit)]
    if not others or not n_sets:
        return None
    rng = np.random.default_rng(seed)
    controls = [share([others[i] for i in rng.choice(len(others), min(len(circuit), len(others)), replace=False)])
                for _ in range(n_sets)]
    return {"n_sets": len(controls), "mean": float(np.mean([c["mean"] for c in controls])),
            "min": float(min(c["mean"] for c in controls)), "max": float(max(c["mean"] for c in controls))}
