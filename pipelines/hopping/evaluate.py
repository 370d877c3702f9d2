"""Stage: E0 on a named model: first hop, second hop and two-hop answers per query, and the subsets."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import evaluate


def main() -> None:
    args = stage_args(__doc__, "data", "out", model={"required": True}, graph_model={"default": None})
    summary = evaluate(hopping_params(), args.model, Path(args.data),
                       Path(args.graph_model) if args.graph_model else None, Path(args.out))
    subsets = summary["all"]["subsets"]
    print(f"{args.model}: two-hop {summary['all']['composition']['mean']:.3f}; both hops known and two-hop wrong "
          f"{subsets['incorrect']}, right {subsets['correct']}")


if __name__ == "__main__":
    run(main)
