"""Stage: train the 3-layer logic model for one seed; resumable from its checkpoints."""
from pathlib import Path

from modules.core.params import load, section
from modules.core.stage import run, stage_args
from modules.studies.logic.params import check_seed
from modules.studies.logic.stages import train_seed
from modules.studies.logic.training.train import TrainConfig


def main() -> None:
    args = stage_args(__doc__, "data", "out", seed=True)
    seed = check_seed(args.seed)
    result = train_seed(load(TrainConfig, section("logic", "train"), "logic.train"), seed, Path(args.data),
                        Path(args.out))
    print(f"seed {seed}: val exact match {result.val_exact_match:.4f} after {result.steps} steps "
          f"({result.wall_s:.0f} s); model at {Path(args.out) / 'models' / f'seed{seed}'}")


if __name__ == "__main__":
    run(main)
