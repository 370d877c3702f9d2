"""Stage: E5 on a named model: back-patching from t1 and t2 with its controls."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import backpatch


def main() -> None:
    args = stage_args(__doc__, "data", "evaluated", "out", "metrics", model={"required": True},
                      graph_model={"default": None})
    summary = backpatch(hopping_params(), args.model, Path(args.data),
                        Path(args.graph_model) if args.graph_model else None, Path(args.evaluated), Path(args.out),
                        Path(args.metrics))
    oracle = summary["incorrect"].get("either", {}).get("oracle", {})
    print(f"{args.model}: back-patching oracle {oracle.get('k', 0)} of {oracle.get('n', 0)} incorrect queries "
          f"in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    run(main)
