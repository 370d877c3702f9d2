"""Stage: generate study 2's items, few-shot examples, subtasks with corruptions, and the one-hop set."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import generate_data


def main() -> None:
    args = stage_args(__doc__, "out")
    rows = generate_data(ontology_params(), Path(args.out))
    print(f"wrote {', '.join(f'{n} {name}' for name, n in rows.items())} rows to {args.out}")


if __name__ == "__main__":
    run(main)
