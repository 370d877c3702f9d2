"""Stage: generate study 3's fictional knowledge graph (entities, relations, atomic facts, two-hop splits)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import generate_data


def main() -> None:
    args = stage_args(__doc__, "out")
    rows = generate_data(hopping_params(), Path(args.out))
    print(f"wrote {', '.join(f'{n} {name}' for name, n in rows.items())} rows to {args.out}")


if __name__ == "__main__":
    run(main)
