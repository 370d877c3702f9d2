"""What every stage entry point shares: environment defaults, path arguments, one-line errors.

A stage script parses its paths, reads its params section (:mod:`modules.core.params`), calls one
library function and lets :func:`run` turn expected failures into one line on stderr and a
non-zero exit, with no traceback and no partial output (the library writes atomically).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers' per-tensor "Loading weights" / "Writing model shards" bars would bury a stage's own
# progress lines and its one-line errors in the logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def stage_args(description: str | None, *paths: str, seed: bool = False, **options: dict) -> argparse.Namespace:
    """``--<path>`` for each name in ``paths`` (required: dvc.yaml is the one place that spells
    them), ``--seed`` for a per-seed stage, and ``options`` as name -> argparse keywords."""
    parser = argparse.ArgumentParser(description=description)
    if seed:
        parser.add_argument("--seed", type=int, required=True)
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", required=True)
    for name, keywords in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **keywords)
    return parser.parse_args()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Engine and params errors are ValueErrors; a failed data check is a DataValidationError, which
    only a stage that imported the validation package (Great Expectations, seconds to import) raises."""
    validation = sys.modules.get("modules.validation")
    return (ValueError, FileNotFoundError, *((validation.DataValidationError,) if validation else ()))


def run(main: Callable[[], None]) -> None:
    """Run a stage; expected failures print one line and exit non-zero, without a traceback."""
    try:
        main()
    except Exception as error:
        if not isinstance(error, _expected_errors()):
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)
