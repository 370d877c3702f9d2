"""Stage: the small model's circuit study for one seed - routing attention, probes on the cached
activations, steering, patching and the planning circuit."""
from pathlib import Path

from modules.core.params import load, section
from modules.core.stage import run, stage_args
from modules.studies.logic.circuit import CircuitConfig
from modules.studies.logic.params import check_seed
from modules.studies.logic.stages import analyze_seed


def main() -> None:
    args = stage_args(__doc__, "data", "pairs", "out", seed=True)
    config = load(CircuitConfig, section("logic", "analysis"), "logic.analysis")
    out = analyze_seed(config, check_seed(args.seed), Path(args.data), Path(args.pairs), Path(args.out))
    print(f"seed{args.seed}: analysis at {out}")


if __name__ == "__main__":
    run(main)
