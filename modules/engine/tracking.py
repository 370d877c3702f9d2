"""Log an engine run (patching, ablation, knockout, lens, probe, ...) to MLflow.

One call, one run: params (model, dataset hash, sites, effect dims and shape), the top
effects as metrics, and artifacts: heatmaps, the effects as a long table
(layer, position, head, value, ci_low, ci_high) and as safetensors.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from modules.core.tracking import log_figure, log_table, log_tensors, tracked_run

import mlflow  # noqa: E402,I001  after the helper, which sets MLflow's telemetry defaults

DIMS = ("layer", "position", "head")
KINDS = ("patching", "attribution", "ablation", "steering", "knockout", "lens", "patchscope", "probe")


def _check(effects: Tensor, dims: Sequence[str], ci: tuple[Tensor, Tensor] | None) -> None:
    if not dims or len(set(dims)) != len(dims) or not set(dims) <= set(DIMS):
        raise ValueError(f"dims must be distinct names from {DIMS}, got {tuple(dims)}")
    if effects.ndim != len(dims):
        raise ValueError(f"effects has {effects.ndim} dims {tuple(effects.shape)} but dims names {len(dims)}: {tuple(dims)}")
    if ci is not None and any(tuple(c.shape) != tuple(effects.shape) for c in ci):
        raise ValueError(f"ci (low, high) must both have the effects' shape {tuple(effects.shape)}")


def effects_table(effects: Tensor, dims: Sequence[str] = ("layer", "position"),
                  ci: tuple[Tensor, Tensor] | None = None) -> pd.DataFrame:
    """Long format: one row per cell with layer, position, head (<NA> if not a dim), value, ci_low, ci_high."""
    _check(effects, dims, ci)
    index = torch.stack(torch.meshgrid(*[torch.arange(s) for s in effects.shape], indexing="ij")).flatten(1)
    nan = torch.full((effects.numel(),), float("nan"), dtype=torch.float64)
    columns: dict[str, Any] = {
        name: pd.array(index[dims.index(name)].numpy() if name in dims else [pd.NA] * effects.numel(), dtype="Int64")
        for name in DIMS
    }
    columns["value"] = effects.detach().double().flatten().cpu().numpy()
    columns["ci_low"] = (ci[0].detach().double().flatten().cpu() if ci is not None else nan).numpy()
    columns["ci_high"] = (ci[1].detach().double().flatten().cpu() if ci is not None else nan).numpy()
    return pd.DataFrame(columns)


def top_effects(effects: Tensor, dims: Sequence[str] = ("layer", "position"), k: int = 10) -> dict[str, float]:
    """The k cells of largest |effect|, as MLflow metric names like ``effect.layer_2.position_5``."""
    _check(effects, dims, None)
    flat = effects.detach().double().flatten().cpu()
    order = flat.abs().argsort(descending=True, stable=True)[:k]
    out = {}
    for i in order.tolist():
        cell = torch.unravel_index(torch.tensor(i), effects.shape)
        out["effect." + ".".join(f"{d}_{int(c)}" for d, c in zip(dims, cell))] = flat[i].item()
    return out


def effect_heatmap(effects: Tensor, row_label: str = "layer", col_label: str = "position",
                   row_ticks: Sequence[str] | None = None, col_ticks: Sequence[str] | None = None,
                   title: str | None = None, scale: str = "signed", chance: float | None = None,
                   colorbar_label: str | None = None) -> Figure:
    """[rows, cols] heatmap with labelled axes. ``scale="signed"``: an effect, on a diverging scale
    centred at 0; ``"unit"``: a rate or an attention weight in [0, 1], on a sequential scale over
    the whole of [0, 1] (so figures compare), ``chance`` marked on its colour bar. Cells carry their
    values where the grid is small enough to read them; a long title wraps instead of being cut."""
    import textwrap

    if effects.ndim != 2:
        raise ValueError(f"effect_heatmap needs a [rows, cols] tensor, got shape {tuple(effects.shape)}")
    if scale not in ("signed", "unit"):
        raise ValueError(f"scale must be 'signed' or 'unit', got {scale!r}")
    values = effects.detach().float().cpu().numpy()
    rows, cols = values.shape
    if scale == "unit":
        cmap, vmin, vmax = "viridis", 0.0, 1.0
    else:
        vmax = float(abs(values).max()) or 1.0
        cmap, vmin = "RdBu_r", -vmax
    # A bare Figure renders with the Agg canvas and never touches pyplot's global state.
    fig = Figure(figsize=(min(max(5.0, 2.5 + 0.55 * cols), 16), min(max(3.0, 2 + 0.45 * rows), 12)))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_xticks(range(cols), list(col_ticks) if col_ticks is not None else range(cols),
                  rotation=90 if col_ticks is not None else 0)
    ax.set_yticks(range(rows), list(row_ticks) if row_ticks is not None else range(rows))
    if rows * cols <= 120:
        for (row, col), value in numpy.ndenumerate(values):
            light = (value - vmin) / (vmax - vmin) < 0.5 if scale == "unit" else abs(value) > 0.6 * vmax
            text = f"{value:.2f}"
            ax.text(col, row, "0.00" if text == "-0.00" else text, ha="center", va="center", fontsize=7,
                    color="white" if light else "black")
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    bar = fig.colorbar(image, ax=ax, label=colorbar_label)
    if chance is not None:
        bar.ax.axhline(chance, color="red", linewidth=2)  # the caller's colorbar_label says what it is
    fig.tight_layout()
    return fig


def _heatmaps(effects: Tensor, dims: Sequence[str], ticks: Mapping[str, Sequence[str]], title: str,
              **style) -> dict[str, Figure]:
    """One heatmap for 1-D or 2-D effects; for 3-D, one per index of the first dim."""
    tick = lambda d: ticks.get(d)  # noqa: E731
    if effects.ndim == 1:
        return {"heatmap.png": effect_heatmap(effects[None], "", dims[0], None, tick(dims[0]), title, **style)}
    if effects.ndim == 2:
        return {"heatmap.png": effect_heatmap(effects, dims[0], dims[1], tick(dims[0]), tick(dims[1]), title, **style)}
    return {f"heatmap_{dims[0]}_{i}.png": effect_heatmap(effects[i], dims[1], dims[2], tick(dims[1]), tick(dims[2]),
                                                         f"{title} ({dims[0]} {i})", **style)
            for i in range(effects.shape[0])}


def log_engine_run(kind: str, effects: Tensor, *, model: str, dataset_hash: str, sites: Iterable[str],
                   dims: Sequence[str] = ("layer", "position"), ci: tuple[Tensor, Tensor] | None = None,
                   tick_labels: Mapping[str, Sequence[str]] | None = None, params: Mapping[str, Any] | None = None,
                   tensors: Mapping[str, Tensor] | None = None, top_k: int = 10, study: str = "engine",
                   data_paths: Iterable[str | os.PathLike] = (), nested: bool = False,
                   run_name: str | None = None, scale: str = "signed", chance: float | None = None) -> str:
    """Log one engine run to MLflow, named ``run_name`` (default: ``kind``); returns its run id.

    ``effects`` is a ``[len(dims)]``-dimensional tensor over ``dims`` (e.g. ``[layers, positions]``
    or ``[layers, heads]``), ``ci`` its (low, high) bounds. ``tick_labels`` names axis ticks
    (prompt tokens for positions, say). ``tensors`` are extra tensors stored next to the effects.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check(effects, dims, ci)
    sites = list(sites)
    run_params = {"kind": kind, "model": model, "dataset_hash": dataset_hash, "sites": ",".join(sites),
                  "n_sites": len(sites), "dims": ",".join(dims), "shape": "x".join(map(str, effects.shape)),
                  **(params or {})}
    with tracked_run(study, run_name or kind, params=run_params, data_paths=data_paths, nested=nested) as run:
        values = effects.detach().double()
        mlflow.log_metrics({"max_abs_effect": values.abs().max().item(), "mean_effect": values.mean().item(),
                            **top_effects(effects, dims, top_k)})
        for name, fig in _heatmaps(effects, dims, tick_labels or {}, f"{run_name or kind}: {model}", scale=scale,
                                   chance=chance).items():
            log_figure(fig, f"figures/{name}")
        log_table(effects_table(effects, dims, ci), "effects/effects.csv")
        stored = {"effects": effects, **({"ci_low": ci[0], "ci_high": ci[1]} if ci is not None else {}),
                  **(tensors or {})}
        log_tensors(stored, "effects/effects.safetensors")
        return run.info.run_id
