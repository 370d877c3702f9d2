"""Stage: write the study's report (README.md and each seed's figures; reports/logic by default,
logic.report.dir) from the circuit analyses and the evaluations of every trained seed."""
import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from modules.analysis.logic_circuit_report import render_report
from modules.io import atomic_dir
from pipelines._stage import logic_seeds, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--analysis", default="artifacts/logic/analysis")
    parser.add_argument("--metrics", default="artifacts/logic/metrics")
    parser.add_argument("--out", default="reports/logic")
    args = parser.parse_args()
    analysis, seeds, evaluation = Path(args.analysis), {}, {}
    for seed in logic_seeds():
        folder = analysis / f"seed{seed}"
        if not (folder / "summary.json").is_file():
            raise FileNotFoundError(f"no analysis for seed {seed} at {folder}/summary.json; run analyze_logic first")
        summary = json.loads((folder / "summary.json").read_text())
        summary["probes"]["table"] = pd.read_csv(folder / "probes.csv").to_dict("records")
        seeds[seed] = summary
        metrics = Path(args.metrics) / f"seed{seed}.json"
        if metrics.is_file():
            evaluation[seed] = json.loads(metrics.read_text())
    with atomic_dir(args.out) as tmp:
        for seed in seeds:
            shutil.copytree(analysis / f"seed{seed}" / "figures", tmp / "figures" / f"seed{seed}")
        (tmp / "README.md").write_text(render_report(seeds, evaluation, data=params("logic", "data")))
    print(f"report at {args.out}/README.md")


if __name__ == "__main__":
    run(main)
