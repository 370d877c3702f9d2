"""Stage: a named model's per-subtask head patching, answer writers, copy scores and information-flow trace."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import run_heads


def main() -> None:
    args = stage_args(__doc__, "data", "behaviour", "out", "metrics", model={"required": True}, weights={"default": None})
    summary = run_heads(ontology_params(), args.model, Path(args.weights) if args.weights else None,
                        Path(args.data), Path(args.behaviour), Path(args.out), Path(args.metrics))
    print(f"{args.model}: heads analysed in {summary['seconds']:.0f} s; rift layer {summary['trace']['rift_layer']}")


if __name__ == "__main__":
    run(main)
