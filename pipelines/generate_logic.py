"""Stage: generate the train/val/test splits of propositional-logic problems."""
import argparse
import time

from modules.data.logic import generate_splits, write_splits
from modules.io import atomic_dir
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="artifacts/logic/data")
    args = parser.parse_args()
    config = params("logic", "data")
    with tracked_run(LOGIC_STUDY, "generate", config):
        import mlflow

        start = time.perf_counter()
        try:
            frames = generate_splits(config["seed"], dict(config["sizes"]), config["depth"],
                                     config["logop_share"], config["operators"])
        except ValueError as error:  # the data module names the key; say where it lives
            raise ValueError(f"params.yaml logic.data.{error}") from None
        with atomic_dir(args.out) as tmp:
            write_splits(frames, tmp)
        mlflow.log_metrics({"generate_s": time.perf_counter() - start,
                            **{f"rows_{split}": len(frame) for split, frame in frames.items()}})
        mlflow.log_param("data_hash.splits", data_hash([args.out]))


if __name__ == "__main__":
    run(main)
