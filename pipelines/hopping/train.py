"""Stage: train the from-scratch Llama on the fictional knowledge graph; an HF directory and its scores."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import train


def main() -> None:
    args = stage_args(__doc__, "data", "tuned", "out", "metrics")
    summary = train(hopping_params(), Path(args.data), Path(args.tuned), Path(args.out), Path(args.metrics))
    print(f"trained {summary['steps']} steps in {summary['wall_s']:.0f} s: "
          + ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.endswith("_exact_match")))


if __name__ == "__main__":
    run(main)
