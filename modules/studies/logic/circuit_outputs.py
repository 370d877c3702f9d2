"""The circuit study's outputs: heatmaps, headline metrics, the files on disk and the MLflow run."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from modules.analysis.outputs import log_patching_runs, log_results, write_results
from modules.studies.logic import STUDY
from modules.studies.logic.circuit import PROBE_TARGETS, CircuitResult
from modules.studies.logic.llm import DIRECTIONS


def circuit_figures(result: CircuitResult, model_name: str) -> dict[str, object]:
    """Heatmaps: attention to the query per chain and to the rules and facts sections (layer x
    head), patching effects of the residual stream (layer x the first pair's tokens) and of heads
    (layer x head), and probe accuracy per target with its majority-class floor. Attention weights
    and accuracies on the same [0, 1] scale in every figure; effects on a diverging one."""
    from modules.engine.tracking import effect_heatmap

    label = Path(model_name).name  # "seed0", not the whole path
    figures = {}
    for target, what in (("query", "the query variable"), ("conclusion", "the queried rule's conclusion")):
        for chain in DIRECTIONS:
            figures[f"attention_{target}_{chain}.png"] = effect_heatmap(
                result.tensors[f"attention.{target}.{chain}"], "layer", "head", scale="unit",
                colorbar_label="mean attention weight",
                title=f"{label}, {chain}-chain queries: attention from the last position to {what}")
    for section in ("rules", "facts"):
        figures[f"attention_{section}.png"] = effect_heatmap(
            result.tensors[f"attention.{section}.all"], "layer", "head", scale="unit",
            colorbar_label="attention weight summed over the section",
            title=f"{label}: attention from the last position to the {section.upper()} section (all queries)")
    tokens = result.summary.get("patching_tokens")
    if tokens is not None and "effect.resid_pre" in result.tensors and len(tokens) != result.tensors["effect.resid_pre"].shape[1]:
        tokens = None  # positions that are not one prompt's tokens: numbered instead
    for site, col, ticks in (("resid_pre", "position (the first pair's clean tokens)", tokens), ("head_out", "head", None)):
        if f"effect.{site}" in result.tensors:
            figures[f"patching_{site}.png"] = effect_heatmap(
                result.tensors[f"effect.{site}"], "layer", col, col_ticks=ticks,
                colorbar_label="share of the logit difference restored",
                title=f"{label}: patching {site} from the clean into the flipped prompt")
    for target in PROBE_TARGETS:
        probes = result.probes[result.probes.target == target]
        table = probes.pivot(index="layer", columns="position", values="accuracy")
        figures[f"probe_{target}.png"] = effect_heatmap(
            torch.tensor(table.to_numpy()), "layer", "position", col_ticks=list(table.columns), scale="unit",
            chance=float(probes.majority.iloc[0]), colorbar_label="test accuracy (red: majority class)",
            title=f"{label}: linear probe for {target.replace('_', ' ')}")
    return figures


def circuit_metrics(summary: Mapping) -> dict[str, float]:
    """Headline numbers, flat, for `dvc metrics show` and MLflow."""
    head, conclusion = summary["attention"]["routing_head"], summary["attention"]["conclusion_head"]
    metrics = {"routing_attention_linear": head["linear"]["mean"], "routing_attention_logop": head["logop"]["mean"],
               "conclusion_attention_linear": conclusion["linear"]["mean"],
               "conclusion_attention_logop": conclusion["logop"]["mean"],
               "flip_pairs_solved": float(summary["flip_pairs"]["n_solved_examples"])}
    steering = summary.get("steering", {})
    if steering:
        metrics["steering_flip"] = steering["difference_of_means"]["flip"]["mean"]
    if "random" in steering:
        metrics["steering_flip_random"] = steering["random"]["flip"]["mean"]
    for target, best in summary["probes"]["best"].items():
        metrics[f"probe.{target}"] = float(best["accuracy"])
    for direction in DIRECTIONS:
        metrics[f"flip_pairs_first_token_{direction}"] = summary["flip_pairs"][f"first_token_{direction}"]["mean"]
    circuit = summary.get("circuit", {})
    metrics["circuit_heads"] = float(len(circuit.get("circuit", [])))
    if "sufficiency" in circuit:
        metrics["sufficiency"] = circuit["sufficiency"]["mean"]
        metrics["necessity"] = circuit["necessity"]["mean"]
    return metrics


def write_circuit(result: CircuitResult, out_dir, model_name: str, run_id: str = "") -> None:
    """summary.json, probes.csv, tensors.safetensors and figures/ under ``out_dir``."""
    write_results(out_dir, {"model": model_name, "mlflow_run_id": run_id, **result.summary},
                  {"probes.csv": result.probes}, result.tensors, circuit_figures(result, model_name))


def log_circuit(result: CircuitResult, model_name: str, dataset_hash: str, figures_dir) -> None:
    """Into the active MLflow run: metrics, summary, probe table, tensors and saved figures; one
    nested run per patching sweep and one per probed variable, through the engine's run logger."""
    from modules.engine.tracking import log_engine_run

    log_results(circuit_metrics(result.summary), result.summary, {"probes.csv": result.probes}, result.tensors,
                figures_dir)
    sites = {site: dims for site, dims in (("resid_pre", ("layer", "position")), ("head_out", ("layer", "head")))
             if f"effect.{site}" in result.tensors}
    log_patching_runs(result.tensors, sites, model=model_name, dataset_hash=dataset_hash,
                      n_layers=result.summary["n_layers"], n_examples=result.summary["flip_pairs"]["n_examples"],
                      study=STUDY, metric="normalised logit difference, flipped -> clean")
    as_tensor = lambda frame: torch.tensor(frame.to_numpy(), dtype=torch.float32)  # noqa: E731
    for target, probes in result.probes.groupby("target", sort=False):  # one nested run per probed variable
        grid = {column: probes.pivot(index="layer", columns="position", values=column)
                for column in ("accuracy", "ci_low", "ci_high")}
        log_engine_run("probe", as_tensor(grid["accuracy"]), model=model_name, dataset_hash=dataset_hash,
                       sites=[f"resid_post.{layer}" for layer in grid["accuracy"].index], dims=("layer", "position"),
                       ci=(as_tensor(grid["ci_low"]), as_tensor(grid["ci_high"])),
                       tick_labels={"position": list(grid["accuracy"].columns)},
                       params={"target": target, "n_examples": result.summary["probes"]["n"],
                               "majority_baseline": float(probes.majority.iloc[0])},
                       study=STUDY, nested=True, run_name=f"probe {target}", scale="unit",
                       chance=float(probes.majority.iloc[0]))
