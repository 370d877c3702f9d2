"""Pieces of the generated reports: percentages with CIs, markdown tables, verdicts against a claim."""
from __future__ import annotations

from typing import Mapping


def pct_ci(entry: Mapping, digits: int = 1) -> str:
    return (f"{100 * entry['mean']:.{digits}f}% (95% CI {100 * entry['ci_low']:.{digits}f}-"
            f"{100 * entry['ci_high']:.{digits}f}%)")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def verdict(entry: Mapping, threshold: float, above: bool) -> str:
    """'reproduced' when the whole 95% CI lies on the claimed side of ``threshold``, 'not
    reproduced' when it lies wholly on the other side, else 'inconclusive'."""
    low, high = entry["ci_low"], entry["ci_high"]
    if (low > threshold) if above else (high < threshold):
        return "reproduced"
    if (high < threshold) if above else (low > threshold):
        return "not reproduced"
    return "inconclusive"
