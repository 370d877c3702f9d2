"""Stage: write the study's report (README.md and each seed's figures) from the analysis and
evaluation outputs of every seed in logic.seeds, and their training summaries."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import logic_section, logic_seeds
from modules.studies.logic.stages import write_report


def main() -> None:
    args = stage_args(__doc__, "analysis", "metrics", "train", "out")
    path = write_report(logic_seeds(), logic_section("data"), Path(args.analysis), Path(args.metrics), Path(args.out),
                        Path(args.train))
    print(f"report at {path}")


if __name__ == "__main__":
    run(main)
