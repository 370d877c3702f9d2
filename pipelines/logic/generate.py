"""Stage: generate the train/val/test splits of propositional-logic problems (and the trace
sequences, when logic.data.traces.size > 0)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import logic_section, logic_seeds
from modules.studies.logic.stages import generate_data


def main() -> None:
    args = stage_args(__doc__, "out")
    logic_seeds()  # the first stage: a malformed seed list fails here, before any work
    rows = generate_data(logic_section("data"), Path(args.out))
    print(f"wrote {', '.join(f'{n} {split}' for split, n in rows.items() if n)} rows to {args.out}")


if __name__ == "__main__":
    run(main)
