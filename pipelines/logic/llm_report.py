"""Stage (GPU pipeline): write reports/logic_llm/ (README.md and its figures) from the study's outputs."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.stages import llm_report


def main() -> None:
    args = stage_args(__doc__, "study", "out")
    print(f"report at {llm_report(Path(args.study), Path(args.out))}")


if __name__ == "__main__":
    run(main)
