"""Write study 3's curated real-world queries data/hopping_world.yaml (tracked by data.dvc) from the
canonical set in modules/studies/hopping/world.py, or check that the file still loads (--check).
Regenerate only on purpose: the file is what the pipeline reads."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.world import load_world, write_world

TARGET = Path("data/hopping_world.yaml")


def main() -> None:
    args = stage_args(__doc__, check={"action": "store_true", "help": "verify instead of writing"})
    if args.check:
        world = load_world(TARGET)
        pairs = world.groupby(["r1", "r2"]).ngroups
        print(f"{TARGET}: {len(world)} queries, {len(world.attrs['relations'])} relations, {pairs} relation pairs")
    else:
        print(f"wrote {write_world(TARGET)}")


if __name__ == "__main__":
    run(main)
