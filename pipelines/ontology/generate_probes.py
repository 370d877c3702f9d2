"""Stage: study 2's token-mixing probe set (word pairs in questions, labelled positive / negative /
unrelated; the test split with novel names), deterministic by seed."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import generate_probe_data


def main() -> None:
    args = stage_args(__doc__, "out")
    rows = generate_probe_data(ontology_params(), Path(args.out))
    print("probe pairs: " + ", ".join(f"{key} {n}" for key, n in rows.items()))


if __name__ == "__main__":
    run(main)
