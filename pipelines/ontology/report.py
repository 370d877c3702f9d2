"""Stage: study 2's report (reports/ontology) from every model's outputs."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import report


def main() -> None:
    args = stage_args(__doc__, "root", "out", gpu={"action": "store_true", "help": "report ontology.gpu.models (the 7B run)"})
    print(f"report at {report(ontology_params(), Path(args.root), Path(args.out), args.gpu)}")


if __name__ == "__main__":
    run(main)
