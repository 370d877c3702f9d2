"""Stage: E1-E4 on a named model: description Patchscope, attention knockout, sublayer lens, stages."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import layers


def main() -> None:
    args = stage_args(__doc__, "data", "evaluated", "out", model={"required": True}, graph_model={"default": None})
    summary = layers(hopping_params(), args.model, Path(args.data),
                     Path(args.graph_model) if args.graph_model else None, Path(args.evaluated), Path(args.out))
    print(f"{args.model}: layers analysed in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    run(main)
