"""Stage: tune the from-scratch model's training (Optuna, an RDB study, one nested MLflow run a trial)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import tune


def main() -> None:
    args = stage_args(__doc__, "data", "out")
    best = tune(hopping_params(), Path(args.data), Path(args.out))
    print(f"best trial {best['trial']}: {best['value']:.4f} with {best['params']}")


if __name__ == "__main__":
    run(main)
