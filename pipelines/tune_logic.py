"""Stage: Optuna study over training hyper-parameters; writes the best ones for `dvc exp run -S`."""
import argparse
from pathlib import Path

import mlflow

from modules.data.logic import read_split, read_training_rows, training_files
from modules.io import write_yaml
from modules.tracking.mlflow_tracking import tracked_run
from modules.training.train import TrainConfig
from modules.training.tune import run_study
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="artifacts/logic/data")
    parser.add_argument("--out", default="artifacts/logic/tuning/best_params.yaml")
    args = parser.parse_args()
    tune = params("logic", "tune")
    base = TrainConfig.from_params(params("logic", "train"))
    data = Path(args.data)
    with tracked_run(LOGIC_STUDY, "tune", tune, data_paths=[*training_files(data), data / "val.parquet"]):
        study = run_study(read_training_rows(data), read_split(data / "val.parquet"), base,
                          tune["space"], n_trials=tune["n_trials"], timeout_s=tune["timeout_s"],
                          storage=tune["storage"], study_name=tune["study_name"], seed=tune["seed"],
                          trial_max_steps=tune["trial_max_steps"], mlflow_study=LOGIC_STUDY)
        best = {f"logic.train.{k}": v for k, v in study.best_params.items()}
        mlflow.log_metric("best_val_exact_match", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        write_yaml({"study": study.study_name, "best_value": float(study.best_value), "trials": len(study.trials),
                    "params": best}, args.out)
        mlflow.log_artifact(args.out)
    overrides = " ".join(f"-S {k}={v}" for k, v in best.items())
    print(f"best val exact match {study.best_value:.4f}; train with them: dvc exp run {overrides}")


if __name__ == "__main__":
    run(main)
