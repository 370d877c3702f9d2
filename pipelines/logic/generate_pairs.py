"""Stage: query-flip pairs, validated by GX. One script for both pipelines' pairs: compact pairs for
the small model (logic.pairs) and few-shot natural-language prompts for an LLM (logic_llm.prompts)."""
from pathlib import Path

from modules.core.params import load, section
from modules.core.stage import run, stage_args
from modules.studies.logic.params import PairsParams
from modules.studies.logic.stages import generate_pairs


def main() -> None:
    args = stage_args(__doc__, "section", "run_name", "out", "docs",
                      exclude={"help": "a Parquet split whose compact prompts no pair may reuse"})
    config = load(PairsParams, section(*args.section.split(".")), args.section)
    pairs = generate_pairs(config, args.section, args.run_name, Path(args.out), Path(args.docs),
                           Path(args.exclude) if args.exclude else None)
    print(f"{len(pairs)} query-flip pairs (depth {config.depth}, {config.shots} shots) at {args.out}; "
          f"Data Docs at {args.docs}/index.html")


if __name__ == "__main__":
    run(main)
