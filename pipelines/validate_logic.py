"""Stage: run the Great Expectations suite on every split and on the frozen benchmark.

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
    config = {**params("logic", "validation"), "logop_share": data["logop_share"],
              "operators": data["operators"], "depth": data["depth"]}
    splits = {split: Path(args.data) / f"{split}.parquet" for split in data["sizes"]}
    splits["benchmark"] = Path(args.benchmark)
    missing = [str(p) for p in splits.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset file(s) not found: {', '.join(missing)}")
    with tracked_run(LOGIC_STUDY, "validate", config, data_paths=list(splits.values())):
        report = validate_logic_splits(splits, config, Path(args.docs), Path(args.summary))
        mlflow.log_metrics({"validation_success": float(report.success),
                            "failed_expectations": float(len(report.failures())),
                            "checked_expectations": float(len(report.outcomes))})
        mlflow.log_artifact(args.summary)
        mlflow.log_artifacts(args.docs, artifact_path="data_docs")
        raise_on_failure(report)
    print(f"validation passed: {len(report.outcomes)} expectations over {len(splits)} datasets; "
          f"Data Docs at {report.docs_index}")


if __name__ == "__main__":
    run(main)
