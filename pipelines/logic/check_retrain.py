"""Check (not a stage): retrain one seed on this machine and compare it with the committed run.
Training is bit-reproducible only on the same CPU and thread count, so the retrained model passes
when its test exact match lies inside the committed run's 95% CI (`make check-retrain`)."""
import tempfile
from dataclasses import replace
from pathlib import Path

from modules.core.params import load, section
from modules.core.stage import run, stage_args
from modules.studies.logic.params import check_seed, logic_section
from modules.studies.logic.stages import check_retrain
from modules.studies.logic.training.train import TrainConfig


def main() -> None:
    args = stage_args(__doc__, "data", "benchmark", "committed", seed=True,
                      threads={"type": int, "default": 0, "help": "torch threads for training (0: one per core)"})
    seed = check_seed(args.seed)
    config = load(TrainConfig, section("logic", "train"), "logic.train")
    if args.threads:
        config = replace(config, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="retrain-") as scratch:
        outcome = check_retrain(config, seed, logic_section("data").prompt_end, Path(args.data), Path(args.benchmark),
                                Path(args.committed), Path(scratch))
    print(outcome["line"])


if __name__ == "__main__":
    run(main)
