"""Stage (GPU pipeline): query-flip few-shot prompts for the LLM study, validated by GX."""
import argparse
from pathlib import Path

import mlflow

from modules.data.logic.dataset import generate_flip_pairs
from modules.data.validation import raise_on_failure, validate_flip_pairs
from modules.io import atomic_dir
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="artifacts/logic_llm/prompts")
    parser.add_argument("--docs", default="reports/data_docs/logic_llm")
    args = parser.parse_args()
    config = params("logic_llm", "prompts")
    with tracked_run(LOGIC_STUDY, "llm-prompts", config):
        try:
            pairs = generate_flip_pairs(config["seed"], config["n_pairs"], depth=config["depth"], k=config["shots"])
        except ValueError as error:  # the data module names the key; say where it lives
            raise ValueError(f"params.yaml logic_llm.prompts: {error}") from None
        with atomic_dir(args.out) as tmp:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
            report = validate_flip_pairs(tmp / "pairs.parquet", Path(args.docs),
                                         summary_path=tmp / "validation.json")
            raise_on_failure(report)  # a failed suite leaves no prompts behind
        mlflow.log_metrics({"pairs": float(len(pairs)), "validation_success": 1.0})
        mlflow.log_param("data_hash.pairs", data_hash([Path(args.out) / "pairs.parquet"]))
    print(f"{len(pairs)} query-flip pairs (depth {config['depth']}, {config['shots']} shots) at {args.out}; "
          f"Data Docs at {args.docs}/index.html")


if __name__ == "__main__":
    run(main)
