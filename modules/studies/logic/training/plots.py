"""Figures for MLflow artifacts and reports (Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def curve_figure(curve: pd.DataFrame, title: str):
    """Validation exact match and training loss against wall time."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if len(curve):
        axis.plot(curve["elapsed_s"], curve["val_exact_match"], marker="o", label="val exact match")
        twin = axis.twinx()
        twin.plot(curve["elapsed_s"], curve["train_loss"], color="tab:orange", alpha=0.6, label="train loss")
        twin.set_ylabel("train loss")
    axis.set_xlabel("wall time (s)")
    axis.set_ylabel("exact match")
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def breakdown_figure(table: pd.DataFrame, title: str):
    """Exact match with 95% CIs per problem type."""
    labels = table["query_chain"] + "/" + table["operator"] + "/" + table["source_truth"]
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(table)), 3.5))
    errors = [table["exact_match"] - table["ci_low"], table["ci_high"] - table["exact_match"]]
    axis.bar(range(len(table)), table["exact_match"], yerr=errors, capsize=2)
    axis.set_xticks(range(len(table)), labels, rotation=70, fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("exact match")
    axis.set_title(title)
    figure.tight_layout()
    return figure
