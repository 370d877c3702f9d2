"""Stage: study 3's report (reports/hopping/README.md and figures) from every model's outputs."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import report


def main() -> None:
    args = stage_args(__doc__, "root", "out", training={"default": None},
                      gpu={"action": "store_true", "help": "report hopping.gpu.models (the 7B run)"})
    print(f"wrote {report(hopping_params(), Path(args.root), Path(args.training) if args.training else None, Path(args.out), args.gpu)}")


if __name__ == "__main__":
    run(main)
