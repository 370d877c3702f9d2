"""Stage: a named model's greedy chain of thought and per-subtask next-word accuracy on study 2's items."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import run_behaviour


def main() -> None:
    args = stage_args(__doc__, "data", "out", model={"required": True}, weights={"default": None})
    summary = run_behaviour(ontology_params(), args.model, Path(args.weights) if args.weights else None,
                            Path(args.data), Path(args.out))
    print(f"{args.model}: chain of thought exact {summary['cot_exact']['k']}/{summary['cot_exact']['n']}, "
          f"label right {summary['label_accuracy']['k']}/{summary['label_accuracy']['n']}")


if __name__ == "__main__":
    run(main)
