"""Pieces of the generated reports: percentages with CIs, markdown tables, verdicts against a claim."""
from __future__ import annotations

from pathlib import Path
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


def source_run_ids(results) -> list[str]:
    """Every ``mlflow_run_id`` in a nest of dicts and lists: the runs whose numbers a report shows."""
    found: set[str] = set()
    stack = [results]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if isinstance(node.get("mlflow_run_id"), str):
                found.add(node["mlflow_run_id"])
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return sorted(found)


def write_report(out, readme: str, figures: Mapping[str, object], *, study: str, run_name: str, results) -> Path:
    """``out``/README.md and the figure folders (``figures`` maps a folder under ``out/figures`` to
    its source), written atomically, then logged as an MLflow run ``run_name`` of ``study`` whose
    ``source_runs`` tag lists the runs behind the report's numbers; the README's path."""
    import shutil

    import mlflow

    from modules.core.io import atomic_dir
    from modules.core.tracking import tracked_run

    out = Path(out)
    with atomic_dir(out) as tmp:
        for folder, source in figures.items():
            shutil.copytree(source, tmp / "figures" / folder)
        (tmp / "README.md").write_text(readme)
    sources = source_run_ids(results)
    with tracked_run(study, run_name, tags={"source_runs": ",".join(sources)[:5000]}):
        mlflow.log_metric("source_runs", len(sources))
        mlflow.log_artifacts(str(out), artifact_path="report")
    return out / "README.md"
