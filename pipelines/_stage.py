"""Wiring shared by the stage entry points: params.yaml access and one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOGIC_STUDY = "propositional-logic"


def params(*keys: str, path: Path = ROOT / "params.yaml") -> Any:
    """``params("logic", "train")`` -> that section of params.yaml, or a one-line error."""
    node: Any = yaml.safe_load(path.read_text())
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"params.yaml: missing key {'.'.join(keys[:depth + 1])}")
        node = node[key]
    return node


def logic_seeds() -> list[int]:
    """``logic.seeds``: the models the per-seed stages train, evaluate and analyse."""
    seeds = params("logic", "seeds")
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds) \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"params.yaml logic.seeds must be a non-empty list of distinct ints >= 0, got {seeds!r}")
    return seeds


def seed_stage_args(description: str, **extra: str) -> argparse.Namespace:
    """The arguments of a per-seed stage: --seed, --data, --out, plus ``extra`` path options
    given as name=default."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", default="artifacts/logic/data")
    parser.add_argument("--out", default="artifacts/logic")
    for name, default in extra.items():
        parser.add_argument(f"--{name}", default=default)
    return parser.parse_args()


def run(main: Callable[[], None]) -> None:
    """Run a stage; expected failures print one line and exit non-zero, without a traceback."""
    from modules.data.validation import DataValidationError

    try:
        main()
    except (ValueError, FileNotFoundError, DataValidationError) as error:  # engine errors are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)
