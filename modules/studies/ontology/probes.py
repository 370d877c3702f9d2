"""Token-mixing probes (Dutta et al. 2024 §3.6): does the residual stream at two words of a question
tell how the ontology relates them (positive, negative, unrelated), and from which layer?

For every pair of the probe set the residual stream is read at the first sub-token of each word
(the engine's ``resid_pre.0`` for the embeddings, ``resid_post.l`` after each block), and the two
vectors are concatenated. Per layer, a linear probe and a non-linear one (one ReLU hidden layer:
the engine's batched probes; the paper's MLP had three) are trained on the training split, which
keeps a held-out share for an in-distribution score; the test split's questions use names never
seen in training (out of distribution). The score is macro-F1 (chance 1/3 with balanced classes),
with a percentile bootstrap CI over pairs; the peak layer's CI comes from the same resamples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from modules.core.params import load, param
from modules.engine.adapters import get_adapter
from modules.engine.hooks import capture
from modules.engine.probes import split_indices, train_probes
from modules.studies.ontology.heads import _token_at
from modules.studies.ontology.probe_data import LABELS
from modules.studies.ontology.prompts import shot_blocks, test_prompt

PROBES = {"linear": 0}  # name -> hidden width (0: linear); the MLP's width is the config's ``hidden``


@dataclass(frozen=True)
class ProbesConfig:
    shots: int = param(0, range=(0, 64))              # solved examples before each question (the paper: 0-4)
    hidden: int = param(128, range=(1, 4096))         # the non-linear probe's hidden width
    epochs: int = param(60, range=(1, 10**5))
    batch_size: int = param(128, range=(1, 10**6))
    lr: float = param(1e-3, range=(1e-7, 10.0))
    weight_decay: float = param(1e-2, range=(0.0, 10.0))
    held_out: float = param(0.2, range=(0.01, 0.9))   # share of the training split scored in distribution
    layers_per_fit: int = param(16, range=(1, 1024))  # layers trained together (memory bound)
    n_boot: int = param(1000, range=(1, 10**6))
    seed: int = param(0, range=(0, 2**32 - 1))
    threads: int = param(0, range=(0, 1024), optional=True)  # machine setting: torch's intra-op threads

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False) -> "ProbesConfig":
        return load(cls, dict(mapping), "ontology.probes", complete=complete)


def word_states(model, tokenizer, pairs: pd.DataFrame, shots: pd.DataFrame | None, config: ProbesConfig,
                progress: Callable[[str], None] = print) -> Tensor:
    """``[layers + 1, n_pairs, 2 * d]``: the residual stream at each pair's two words, concatenated."""
    adapter = get_adapter(model)
    sites = ["resid_pre.0", *(f"resid_post.{layer}" for layer in range(adapter.n_layers))]
    blocks = shot_blocks(shots, "fictional", config.shots) if config.shots else []
    device = next(model.parameters()).device
    states = torch.empty(len(sites), len(pairs), 2 * adapter.d_model)
    questions = pairs.groupby("question", sort=False).indices
    for done, (question, rows) in enumerate(questions.items()):
        prompt = test_prompt(blocks, question)
        start = prompt.index(question)
        encoded = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        offsets = encoded["offset_mapping"]
        ids = torch.tensor([encoded["input_ids"]], device=device)
        with torch.inference_mode(), capture(model, sites) as acts:
            model(ids)
        for row in rows:
            pair = pairs.iloc[row]
            positions = [_token_at(offsets, start + int(pair.char1)), _token_at(offsets, start + int(pair.char2))]
            for i, site in enumerate(sites):
                states[i, row] = acts[site][0, positions].flatten().float().cpu()
        if (done + 1) % 100 == 0 or done + 1 == len(questions):
            progress(f"probe states: {done + 1}/{len(questions)} questions")
    return states


def macro_f1(predicted: np.ndarray, gold: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Macro-F1 over the classes of ``gold`` for predictions ``[n, ...]``; with ``weights`` ``[B, n]``
    (bootstrap resampling counts) one value per resample ``[B, ...]``."""
    scores = []
    for cls in range(len(LABELS)):
        hit, pred, true = ((predicted == cls) & (gold[:, None] == cls)), predicted == cls, gold[:, None] == cls
        if weights is None:
            tp, fp, fn = hit.sum(0), (pred & ~hit).sum(0), (true & ~hit).sum(0)
        else:
            tp, fp, fn = weights @ hit, weights @ (pred & ~hit), weights @ (true & ~hit)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
    return np.mean(scores, axis=0)


def _scores(name: str, split: str, predicted: np.ndarray, gold: np.ndarray, config: ProbesConfig) -> tuple[list[dict], dict]:
    """Per-layer rows (macro-F1 with its CI, accuracy) and the peak layer with its bootstrap CI."""
    rng = np.random.default_rng(config.seed)
    n = len(gold)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=config.n_boot) / n
    point = macro_f1(predicted, gold)                   # [layers]
    boot = macro_f1(predicted, gold, weights)           # [B, layers]
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    accuracy = (predicted == gold[:, None]).mean(0)
    rows = [{"probe": name, "split": split, "layer": layer, "macro_f1": float(point[layer]),
             "ci_low": float(low[layer]), "ci_high": float(high[layer]), "accuracy": float(accuracy[layer]), "n": n}
            for layer in range(len(point))]
    peaks = boot.argmax(1)
    peak = int(point.argmax())
    last = len(point) - 1
    drop = boot[np.arange(len(boot)), peaks] - boot[:, last]
    return rows, {"peak_layer": peak, "peak_f1": float(point[peak]), "peak_ci": [float(low[peak]), float(high[peak])],
                  "peak_layer_ci": [float(np.quantile(peaks, 0.025)), float(np.quantile(peaks, 0.975))],
                  "embedding_f1": float(point[0]), "embedding_ci": [float(low[0]), float(high[0])],
                  "last_f1": float(point[last]), "peak_minus_last": float(point[peak] - point[last]),
                  "peak_minus_last_ci": [float(np.quantile(drop, 0.025)), float(np.quantile(drop, 0.975))],
                  "n": n, "boot": boot}


def run_probes(model, tokenizer, pairs: pd.DataFrame, shots: pd.DataFrame | None, config: ProbesConfig,
               progress: Callable[[str], None] = print) -> tuple[dict, pd.DataFrame, dict[str, Tensor]]:
    """Train both probes on every layer; (summary, per-layer table, tensors)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    states = word_states(model, tokenizer, pairs, shots, config, progress)
    gold = torch.tensor([LABELS.index(label) for label in pairs["label"]])
    train = torch.tensor((pairs["split"] == "train").to_numpy())
    x_train, y_train, x_test, y_test = states[:, train], gold[train], states[:, ~train], gold[~train]
    _, held_out = split_indices(y_train, config.held_out, config.seed)  # the same split train_probes makes
    n_layers = states.shape[0] - 1
    table, summary, tensors = [], {"n_layers": n_layers, "probes": {}}, {}
    for name, hidden in {**PROBES, "mlp": config.hidden}.items():
        predicted = {"id": [], "ood": []}
        for start in range(0, states.shape[0], config.layers_per_fit):
            chunk = slice(start, start + config.layers_per_fit)
            fit = train_probes(x_train[chunk], y_train, hidden=hidden, epochs=config.epochs,
                               batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                               test_fraction=config.held_out, seed=config.seed)
            with torch.no_grad():
                predicted["id"].append(fit.module(x_train[chunk][:, held_out]).argmax(-1))
                predicted["ood"].append(fit.module(x_test[chunk]).argmax(-1))
            progress(f"{name} probes: layers {start}-{min(start + config.layers_per_fit, states.shape[0]) - 1} trained")
        summary["probes"][name] = {}
        for split, gold_split in (("id", y_train[held_out]), ("ood", y_test)):
            pred = torch.cat(predicted[split]).T.numpy()  # [n, layers]
            rows, peak = _scores(name, split, pred, gold_split.numpy(), config)
            table += rows
            tensors[f"{name}_{split}_boot"] = torch.from_numpy(peak.pop("boot"))
            summary["probes"][name][split] = peak | {"relative_peak": peak["peak_layer"] / n_layers}
    # the non-linear probe's margin over the linear one at its own peak, on the same resamples
    for split in ("id", "ood"):
        mlp, linear = tensors[f"mlp_{split}_boot"], tensors[f"linear_{split}_boot"]
        peak = summary["probes"]["mlp"][split]["peak_layer"]
        margin = (mlp[:, peak] - linear.max(1).values).numpy()
        point = (summary["probes"]["mlp"][split]["peak_f1"] - summary["probes"]["linear"][split]["peak_f1"])
        summary["probes"]["mlp"][split]["over_linear"] = float(point)
        summary["probes"]["mlp"][split]["over_linear_ci"] = [float(np.quantile(margin, 0.025)),
                                                             float(np.quantile(margin, 0.975))]
    summary |= {"n_pairs": {"train": int(train.sum()) - len(held_out), "held_out": len(held_out),
                            "test": int((~train).sum())}, "chance": 1 / len(LABELS), "shots": config.shots}
    return summary, pd.DataFrame(table), tensors


def probes_metrics(summary: dict) -> dict[str, float]:
    return {f"{name}.{split}.{key}": float(value) for name, by_split in summary["probes"].items()
            for split, entry in by_split.items() for key, value in entry.items()
            if key in ("peak_layer", "peak_f1", "last_f1", "relative_peak", "over_linear")}


def probes_figure(table: pd.DataFrame, summary: dict, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {("mlp", "ood"): ("C0", "-"), ("mlp", "id"): ("C0", ":"), ("linear", "ood"): ("C1", "-"),
              ("linear", "id"): ("C1", ":")}
    for (name, split), (colour, line) in styles.items():
        rows = table[(table.probe == name) & (table.split == split)]
        label = f"{'MLP' if name == 'mlp' else 'linear'}, {'novel names (OOD)' if split == 'ood' else 'held-out (ID)'}"
        ax.plot(rows.layer, rows.macro_f1, color=colour, linestyle=line, label=label)
        if split == "ood":
            ax.fill_between(rows.layer, rows.ci_low, rows.ci_high, color=colour, alpha=0.15)
    ax.axhline(summary["chance"], color="grey", linestyle="--", linewidth=1, label="chance (1/3)")
    ax.set_xlabel("hidden state (0: embeddings; l: after block l)")
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{model_name}: token-mixing probes on word pairs (positive / negative / unrelated)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
