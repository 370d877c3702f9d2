"""Wall time for the default training (params.yaml logic.train) to first reach 100% validation
exact match, per seed, then its exact match on the test split. Every seed is an MLflow run.

    python -m benchmarks.bench_training --seeds 0 1 2
    python -m benchmarks.bench_training --set logic.data.rule_order=chain --set logic.train.source_aux=1.0

``--set`` overrides a params.yaml key under logic.data or logic.train for this run (values are
YAML); any logic.data override generates the splits afresh instead of reading the pipeline's.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import mlflow

from modules.studies.logic.data import read_split, splits_from_params
from modules.studies.logic.tokenizer import build_logic_tokenizer
from modules.core.tracking import lightning_logger, tracked_run
from modules.studies.logic.training.evaluate import accuracy_row, exact_matches
from modules.studies.logic.training.train import TrainConfig, train_logic_model
from modules.core.params import apply_overrides, section
from modules.core.stage import run
from modules.studies.logic import STUDY


def load_splits(data_dir: Path, config: dict, fresh: bool):
    if not fresh and all((data_dir / f"{s}.parquet").is_file() for s in ("train", "val", "test")):
        return {s: read_split(data_dir / f"{s}.parquet") for s in ("train", "val", "test")}
    return splits_from_params(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=Path("artifacts/logic/data"))
    parser.add_argument("--max-steps", type=int, default=None, help="override logic.train.max_steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a logic.data or logic.train key of params.yaml (repeatable)")
    args = parser.parse_args()
    logic = apply_overrides(section("logic"), args.overrides, "logic", ("data", "train"))
    config = TrainConfig.from_params(logic["train"])
    if args.max_steps:
        config = replace(config, max_steps=args.max_steps)
    splits = load_splits(args.data, logic["data"], fresh=any(o.startswith("logic.data.") for o in args.overrides))
    data_params = {f"data.{key}": value for key, value in logic["data"].items() if key != "traces"}
    rows = []
    for seed in args.seeds:
        with tracked_run(STUDY, f"bench-training-seed{seed}", {**config.as_dict(), **data_params, "seed": seed},
                         tags={"benchmark": "training"}) as active:
            start = time.perf_counter()
            result = train_logic_model(splits["train"], splits["val"], config, seed,
                                       loggers=[lightning_logger(active)])
            correct = exact_matches(result.module.model, build_logic_tokenizer(), splits["test"])
            test = accuracy_row(correct)
            row = {"seed": seed, "time_to_perfect_val_s": result.time_to_perfect_val_s,
                   "steps": result.steps, "train_wall_s": result.wall_s,
                   "val_exact_match": result.val_exact_match, "test_exact_match": test["exact_match"],
                   "test_ci_low": test["ci_low"], "test_ci_high": test["ci_high"], "test_n": test["n"],
                   "total_s": time.perf_counter() - start}
            mlflow.log_metrics({k: float(v) for k, v in row.items() if v is not None and k != "seed"},
                               step=result.steps)
            rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    reached = [r["time_to_perfect_val_s"] for r in rows if r["time_to_perfect_val_s"] is not None]
    print(f"seeds reaching 100% val exact match: {len(reached)}/{len(rows)}")
    if reached:
        print(f"median time to 100% val exact match: {statistics.median(reached):.0f} s "
              f"(goal <= 600 s; per seed: {', '.join(f'{t:.0f}' for t in reached)})")
    per_seed = ", ".join(f"{r['test_exact_match']:.4f}" for r in rows)
    print(f"test exact match per seed: {per_seed} (n={rows[0]['test_n']})")


if __name__ == "__main__":
    run(main)
