"""Stage: query-flip pairs, validated by GX. One script for both studies' pairs: compact pairs for
the small model (section logic.pairs, never a training prompt) and few-shot prompts for LLMs
(section logic_llm.prompts)."""
import argparse
from pathlib import Path

import mlflow

from modules.data.logic import read_split
from modules.data.logic.dataset import generate_flip_pairs
from modules.data.validation import raise_on_failure, validate_flip_pairs
from modules.io import atomic_dir
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--section", default="logic_llm.prompts", help="params.yaml section, e.g. logic.pairs")
    parser.add_argument("--run-name", default="llm-prompts")
    parser.add_argument("--exclude", help="a Parquet split whose compact prompts no pair may reuse")
    parser.add_argument("--out", default="artifacts/logic_llm/prompts")
    parser.add_argument("--docs", default="reports/data_docs/logic_llm")
    args = parser.parse_args()
    config = params(*args.section.split("."))
    exclude = read_split(args.exclude)["prompt"].tolist() if args.exclude else []
    with tracked_run(LOGIC_STUDY, args.run_name, config, data_paths=[args.exclude] if args.exclude else []):
        try:
            pairs = generate_flip_pairs(config["seed"], config["n_pairs"], depth=config["depth"], k=config["shots"],
                                        exclude=exclude, prompt_end=config.get("prompt_end", "answer"),
                                        rule_order=config.get("rule_order", "shuffled"))
        except ValueError as error:  # the data module names the key; say where it lives
            raise ValueError(f"params.yaml {args.section}: {error}") from None
        with atomic_dir(args.out) as tmp:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
            report = validate_flip_pairs(tmp / "pairs.parquet", Path(args.docs),
                                         summary_path=tmp / "validation.json")
            raise_on_failure(report)  # a failed suite leaves no pairs behind
        mlflow.log_metrics({"pairs": float(len(pairs)), "validation_success": 1.0})
        mlflow.log_param("data_hash.pairs", data_hash([Path(args.out) / "pairs.parquet"]))
    print(f"{len(pairs)} query-flip pairs (depth {config['depth']}, {config['shots']} shots) at {args.out}; "
          f"Data Docs at {args.docs}/index.html")


if __name__ == "__main__":
    run(main)
