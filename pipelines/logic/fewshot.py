"""Stage: the few-shot behaviour grid of a named LM on study 1's query-flip prompts (shots x operators,
first-token and whole-proof accuracy with Wilson intervals)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.llm_stages import fewshot
from modules.studies.logic.params import llm_params


def main() -> None:
    args = stage_args(__doc__, "model", "weights", "out")
    table = fewshot(llm_params(), args.model, Path(args.weights), Path(args.out))
    print(f"{args.model}: {len(table[table['query'] == 'all'])} cells at {args.out}")


if __name__ == "__main__":
    run(main)
