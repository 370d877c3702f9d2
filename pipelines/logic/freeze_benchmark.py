"""Write the frozen benchmark set data/logic_benchmark.parquet (tracked by data.dvc), or check
that the generator still reproduces it (--check). Regenerate only on purpose."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import logic_section
from modules.studies.logic.stages import freeze_benchmark

TARGET = Path("data/logic_benchmark.parquet")


def main() -> None:
    args = stage_args(__doc__, check={"action": "store_true", "help": "verify instead of writing"})
    print(freeze_benchmark(logic_section("benchmark"), logic_section("data"), TARGET, args.check))


if __name__ == "__main__":
    run(main)
