"""Stage: a named model's one-hop inductive-reasoning heads and their sufficiency on each subtask."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import run_onehop


def main() -> None:
    args = stage_args(__doc__, "data", "behaviour", "out", "metrics", model={"required": True},
                      weights={"default": None})
    summary = run_onehop(ontology_params(), args.model, Path(args.weights) if args.weights else None,
                         Path(args.data), Path(args.behaviour), Path(args.out), Path(args.metrics))
    used = ", ".join(f"{c} {e['n']}" for c, e in summary["corruptions"].items())
    print(f"{args.model}: one-hop heads in {summary['seconds']:.0f} s; examples patched: {used}")


if __name__ == "__main__":
    run(main)
