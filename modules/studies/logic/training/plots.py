"""Figures for MLflow artifacts and reports (Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def curve_figure(curve: pd.DataFrame, title: str):
    """Validation exact match and the training loss against the optimizer step, with a legend."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    lines = []
    if len(curve):
        lines += axis.plot(curve["step"], curve["val_exact_match"], marker="o", label="validation exact match")
        twin = axis.twinx()
        lines += twin.plot(curve["step"], curve["train_loss"], color="tab:orange", alpha=0.7,
                           label="training loss (last batch)")
        twin.set_ylabel("training loss")
        axis.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("exact match")
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    figure.tight_layout()
    return figure


# What a breakdown group's three parts mean (evaluate.breakdown's columns).
GROUP_LEGEND = ("query chain (linear or logop) / the logop chain's operator / truth of its two sources (T, F) / "
                "truth of the linear chain's source")


def breakdown_figure(table: pd.DataFrame, title: str):
    """Exact match with 95% CIs per problem type, the group codes explained under the axis."""
    labels = table["query_chain"] + "/" + table["operator"] + "/" + table["source_truth"]
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(table)), 3.8))
    errors = [table["exact_match"] - table["ci_low"], table["ci_high"] - table["exact_match"]]
    axis.bar(range(len(table)), table["exact_match"], yerr=errors, capsize=2)
    axis.set_xticks(range(len(table)), labels, rotation=70, fontsize=7)
    axis.set_xlabel(GROUP_LEGEND, fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("exact match (95% CI)")
    axis.set_title(title)
    figure.tight_layout()
    return figure
