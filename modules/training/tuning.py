"""An Optuna search space in params.yaml, checked against a training config's tunable keys and
sampled per trial: shared by every study that tunes a training run."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import optuna

# name -> (kind, values): "log_float" [low, high], "float" [low, high], "choice" [options...]
SPACE_KINDS = {"log_float", "float", "choice"}


def tunable_keys(config_cls: type) -> set[str]:
    """The numeric keys of a training config (the fields with a range)."""
    return {f.name for f in fields(config_cls) if f.metadata.get("range")}


def check_space(space: Mapping[str, Mapping[str, Any]], config_cls: type) -> None:
    known = tunable_keys(config_cls)
    for name, spec in space.items():
        if name not in known:
            raise ValueError(f"tune.space: {name!r} is not a tunable train key; allowed: {sorted(known)}")
        kind, values = spec.get("kind"), spec.get("values")
        if kind not in SPACE_KINDS:
            raise ValueError(f"tune.space.{name}.kind must be one of {sorted(SPACE_KINDS)}, got {kind!r}")
        if not isinstance(values, list) or not values or (kind != "choice" and len(values) != 2):
            raise ValueError(f"tune.space.{name}.values must be [low, high] for {kind}, or a non-empty list for choice")


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    chosen = {}
    for name, spec in space.items():
        kind, values = spec["kind"], spec["values"]
        if kind == "choice":
            chosen[name] = trial.suggest_categorical(name, values)
        else:
            chosen[name] = trial.suggest_float(name, float(values[0]), float(values[1]), log=kind == "log_float")
    return chosen
