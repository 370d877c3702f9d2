"""Stage: Optuna study over training hyper-parameters; writes the best ones for `dvc exp run -S`."""
from pathlib import Path

from modules.core.params import load, section
from modules.core.stage import run, stage_args
from modules.studies.logic.params import logic_section
from modules.studies.logic.stages import tune_training
from modules.studies.logic.training.train import TrainConfig


def main() -> None:
    args = stage_args(__doc__, "data", "out")
    base = load(TrainConfig, section("logic", "train"), "logic.train")
    study, best = tune_training(logic_section("tune"), base, Path(args.data), Path(args.out))
    overrides = " ".join(f"-S {k}={v}" for k, v in best.items())
    print(f"best val exact match {study.best_value:.4f}; train with them: dvc exp run {overrides}")


if __name__ == "__main__":
    run(main)
