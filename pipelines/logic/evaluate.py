"""Stage: exact match of one seed's model on the test split and the frozen benchmark,
broken down by query chain x operator x source truth values."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import check_seed, logic_section
from modules.studies.logic.stages import evaluate_seed


def main() -> None:
    args = stage_args(__doc__, "data", "benchmark", "out", seed=True)
    seed = check_seed(args.seed)
    metrics = evaluate_seed(seed, logic_section("data").prompt_end, Path(args.data), Path(args.benchmark),
                            Path(args.out))
    test, benchmark = metrics["test"], metrics["benchmark"]
    print(f"seed {seed}: test exact match {test['exact_match']:.4f} (n={test['n']}, 95% CI {test['ci_low']:.4f}-"
          f"{test['ci_high']:.4f}); benchmark {benchmark['exact_match']:.4f} (n={benchmark['n']})")


if __name__ == "__main__":
    run(main)
