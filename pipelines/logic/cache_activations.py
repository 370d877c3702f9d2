"""Stage: cache one seed's residual-stream activations on test problems, for probes and later
analyses (safetensors shards + metadata; a DVC output that later stages reuse)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import check_seed, logic_section
from modules.studies.logic.stages import cache_seed_activations


def main() -> None:
    args = stage_args(__doc__, "data", "out", seed=True)
    out = cache_seed_activations(logic_section("activations"), check_seed(args.seed), Path(args.data), Path(args.out))
    print(f"cached activations at {out}")


if __name__ == "__main__":
    run(main)
