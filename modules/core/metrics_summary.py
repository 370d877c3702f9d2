"""A readable `dvc metrics show`: one line a metric, grouped by file, instead of one table row per
file that is over a thousand characters wide. A rate stored with its Wilson or bootstrap interval
(``exact_match`` or ``mean`` beside ``ci_low``, ``ci_high`` and ``n``) prints on one line as
``value (low-high), n N``; files that a pipeline has not produced yet are listed as not run.

`python -m modules.core.metrics_summary [PREFIX ...]` (`make metrics`): every pipeline's metrics files,
or those whose path starts with a PREFIX (`artifacts/hopping`, say).
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

VALUE_KEYS = ("exact_match", "mean", "rate", "accuracy")
SKIPPED = {"mlflow_run_id", "seed"}


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _rate(node: Mapping) -> str | None:
    """``value (low-high), n N`` for a dict holding a value with its interval, else None."""
    value = next((node[k] for k in VALUE_KEYS if k in node), None)
    if value is None or "ci_low" not in node or "ci_high" not in node:
        return None
    text = f"{_number(value)} ({_number(node['ci_low'])}-{_number(node['ci_high'])})"
    return text + (f", n {_number(node['n'])}" if "n" in node else "")


def metric_lines(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, shown value) for every numeric or boolean leaf, rates collapsed to one line."""
    if isinstance(node, Mapping):
        rate = _rate(node)
        if rate is not None:
            return [(prefix, rate)]
        lines = []
        for key, value in node.items():
            if key not in SKIPPED:
                lines += metric_lines(value, f"{prefix}.{key}" if prefix else str(key))
        return lines
    if isinstance(node, (int, float)):
        return [(prefix, _number(node))]
    return []


def summarise(shown: Mapping[str, Mapping], prefixes: tuple[str, ...] = ()) -> list[str]:
    """Lines from `dvc metrics show --json`'s shape: {workspace: {"data": {file: {"data" | "error"}}}},
    for the files whose path starts with one of ``prefixes`` (all when empty)."""
    lines: list[str] = []
    for workspace in shown.values():
        for path, entry in workspace.get("data", {}).items():
            if prefixes and not path.startswith(prefixes):
                continue
            if "data" not in entry:
                lines.append(f"{path}: not run")
                continue
            rows = metric_lines(entry["data"])
            width = max((len(k) for k, _ in rows), default=0)
            lines += [path] + [f"  {key.ljust(width)}  {value}" for key, value in rows]
    return lines


def main() -> None:
    import json
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="keep the metrics files whose path starts so (default: all)")
    args = parser.parse_args()
    proc = subprocess.run(["dvc", "metrics", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: dvc metrics show failed: {' '.join(proc.stderr.split())}")
    print("\n".join(summarise(json.loads(proc.stdout or "{}"), tuple(args.prefixes))))


if __name__ == "__main__":
    main()
