"""Stage: run the Great Expectations suite on every split, on the trace sequences (when the data
has them) and on the frozen benchmark.

Fails the pipeline, with one line naming the split and expectation, on any violation.
"""
import argparse
from pathlib import Path

import mlflow

from modules.data.validation import raise_on_failure, validate_logic_splits
from modules.tracking.mlflow_tracking import tracked_run
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="artifacts/logic/data")
    parser.add_argument("--benchmark", default="data/logic_benchmark.parquet")
    parser.add_argument("--docs", default="reports/data_docs/logic")
    parser.add_argument("--summary", default="artifacts/logic/validation.json")
    args = parser.parse_args()
    data = params("logic", "data")
    with_traces = data["traces"]["size"] > 0
    config = {**params("logic", "validation"), "logop_share": data["logop_share"], "operators": data["operators"],
              "depth": data["depth"], "prompt_end": data["prompt_end"], "rule_order": data["rule_order"],
              "trace_depth": data["traces"]["depth"] if with_traces else None}
    # the frozen benchmark keeps the depth and prompt ending it was written with
    benchmark = {**config, "depth": params("logic", "benchmark", "depth"), "prompt_end": "answer", "trace_depth": None,
                 "rule_order": "shuffled"}
    # a split of query twins queries each chain in half its rows, whatever logop_share
    split_params = {split: {**config, "logop_share": 0.5} for split in data["query_twins"]}
    split_params["benchmark"] = benchmark
    splits = {split: Path(args.data) / f"{split}.parquet" for split in data["sizes"]}
    splits["benchmark"] = Path(args.benchmark)
    traces = Path(args.data) / "traces.parquet" if with_traces else None
    missing = [str(p) for p in [*splits.values(), traces] if p is not None and not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset file(s) not found: {', '.join(missing)}")
    with tracked_run(LOGIC_STUDY, "validate", config, data_paths=[p for p in [*splits.values(), traces] if p]):
        report = validate_logic_splits(splits, config, Path(args.docs), Path(args.summary),
                                       split_params=split_params, traces=traces)
        mlflow.log_metrics({"validation_success": float(report.success),
                            "failed_expectations": float(len(report.failures())),
                            "checked_expectations": float(len(report.outcomes))})
        mlflow.log_artifact(args.summary)
        mlflow.log_artifacts(args.docs, artifact_path="data_docs")
        raise_on_failure(report)
    print(f"validation passed: {len(report.outcomes)} expectations over {len(splits) + bool(traces)} datasets; "
          f"Data Docs at {report.docs_index}")


if __name__ == "__main__":
    run(main)
