"""Write the frozen benchmark set data/logic_benchmark.parquet (tracked by data.dvc).

Run once, on purpose; the pipeline reads it and never regenerates it. `--check` rebuilds it in
memory and fails if the generator no longer reproduces the tracked bytes (semantic drift).
"""
import argparse
import tempfile
from pathlib import Path

from modules.data.logic import generate_splits, write_splits
from pipelines._stage import params, run

TARGET = Path("data/logic_benchmark.parquet")


def build(out_dir: Path) -> Path:
    config = params("logic", "benchmark")
    frames = generate_splits(config["seed"], {"benchmark": config["size"]}, config["depth"],
                             params("logic", "data", "logop_share"), params("logic", "data", "operators"))
    return write_splits(frames, out_dir)["benchmark"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args()
    if args.check:
        if not TARGET.is_file():
            raise FileNotFoundError(f"{TARGET} is missing: run `dvc pull data.dvc` (or restore it)")
        with tempfile.TemporaryDirectory() as tmp:
            if build(Path(tmp)).read_bytes() != TARGET.read_bytes():
                raise ValueError(f"{TARGET} differs from what the generator now produces: "
                                 "generator semantics drifted")
        print(f"{TARGET}: the generator reproduces the frozen benchmark byte for byte")
        return
    TARGET.parent.mkdir(exist_ok=True)
    path = build(TARGET.parent)
    path.replace(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    run(main)
