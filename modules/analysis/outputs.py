"""Writing and logging an analysis's results: the same files on disk and in MLflow for every study."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from torch import Tensor


def write_results(out_dir, summary: Mapping, tables: Mapping[str, pd.DataFrame], tensors: Mapping[str, Tensor],
                  figures: Mapping[str, object]) -> None:
    """summary.json, the CSV tables, tensors.safetensors and figures/ under ``out_dir`` (the caller
    makes it atomic)."""
    from safetensors.torch import save_file

    from modules.core.io import write_json

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_json(dict(summary), out / "summary.json")
    for name, table in tables.items():
        table.to_csv(out / name, index=False)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(out / "tensors.safetensors"))
    for name, figure in figures.items():
        figure.savefig(out / "figures" / name, dpi=110)


def log_results(metrics: Mapping[str, float], summary: Mapping, tables: Mapping[str, pd.DataFrame],
                tensors: Mapping[str, Tensor], figures_dir) -> None:
    """Into the active MLflow run: the headline metrics, summary.json, the tables, the tensors and
    the figures that :func:`write_results` saved in ``figures_dir``."""
    import mlflow

    from modules.core.tracking import log_json, log_table, log_tensors

    mlflow.log_metrics(dict(metrics))
    log_json(summary, "summary.json")
    for name, table in tables.items():
        log_table(table, name)
    log_tensors(tensors, "tensors.safetensors")
    mlflow.log_artifacts(str(figures_dir), artifact_path="figures")


def log_patching_runs(tensors: Mapping[str, Tensor], sites: Mapping[str, Sequence[str]], *, model: str,
                      dataset_hash: str, n_layers: int, n_examples: int, study: str,
                      metric: str = "normalised logit difference, corrupted -> clean") -> None:
    """One nested engine run per patched site (heatmap, effects table with CIs, raw patched LDs),
    from the tensors ``effect.<site>``, ``effect_ci_low.<site>``, ``effect_ci_high.<site>`` and
    ``patched_ld.<site>``; ``sites`` maps each site to its (row, column) dimension names."""
    from modules.engine.tracking import log_engine_run

    for site, dims in sites.items():
        ci = (tensors[f"effect_ci_low.{site}"], tensors[f"effect_ci_high.{site}"])
        log_engine_run("patching", tensors[f"effect.{site}"], model=model, dataset_hash=dataset_hash,
                       sites=[f"{site}.{layer}" for layer in range(n_layers)], dims=tuple(dims), ci=ci,
                       params={"metric": metric, "n_examples": n_examples},
                       tensors={"patched_ld": tensors[f"patched_ld.{site}"]}, study=study, nested=True,
                       run_name=f"patching {site}")
