"""Optuna study over training hyper-parameters, pruned through Lightning, one nested MLflow run a trial."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping

import optuna
import pandas as pd
from optuna_integration import PyTorchLightningPruningCallback

from modules.core.tracking import lightning_logger
from modules.studies.logic.training.train import TrainConfig, TrainingData, train_logic_model
from modules.training.tuning import check_space, open_study, optimize_to_budget, suggest, trial_run


def settings_fingerprint(train_frame, val_frame, base: TrainConfig, space: Mapping[str, Any],
                         trial_max_steps: int, seed: int) -> str:
    """Short hash of everything a trial's score depends on (data, training settings, search space,
    trial length, seed), but not of the budget (trial count, timeout) or where it runs."""
    execution = {"accelerator", "devices", "strategy", "threads"}
    settings = {k: v for k, v in base.as_dict().items() if k not in execution}
    digest = hashlib.sha256(json.dumps({"train": settings, "space": space, "trial_max_steps": trial_max_steps,
                                        "seed": seed}, sort_keys=True, default=str).encode())
    for frame in (train_frame, val_frame):
        digest.update(pd.util.hash_pandas_object(frame[["prompt", "answer"]], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:10]


def run_study(train_frame, val_frame, base: TrainConfig, space: Mapping[str, Mapping[str, Any]], *,
              n_trials: int, timeout_s: float | None, storage: str, study_name: str, seed: int,
              trial_max_steps: int, mlflow_study: str) -> optuna.Study:
    """Run a study maximising validation exact match until it holds ``n_trials`` finished trials,
    counting those of other workers on the same study.

    The study lives in ``storage`` (any SQLAlchemy URL: sqlite by default, a relative path read from
    the project root; a shared RDB for several workers) as ``<study_name>-<settings fingerprint>``
    and is resumed with ``load_if_exists``: the same settings resume, other data or settings start a
    new study, so a study never mixes trials whose scores cannot be compared.
    """
    check_space(space, TrainConfig)
    if n_trials < 1:  # before the study is opened
        raise ValueError(f"tune.n_trials must be >= 1, got {n_trials}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"tune.timeout_s must be null or a number > 0, got {timeout_s!r}")
    fingerprint = settings_fingerprint(train_frame, val_frame, base, space, trial_max_steps, seed)
    study = open_study(f"{study_name}-{fingerprint}", storage, seed, "val_exact_match",
                       pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))

    encoded: list[TrainingData] = []  # encoding 200,000 rows takes seconds; trials share it

    def objective(trial: optuna.Trial) -> float:
        # a trial is judged on its own seed: no restarts (the pruner stops what does not learn)
        config = replace(base, **suggest(trial, space), max_steps=trial_max_steps, stop_on_perfect=True,
                         query_check_step=0)
        TrainConfig.from_params(config.as_dict())  # range-check the sampled values
        data = next((d for d in encoded if d.suits(config)), None)
        if data is None:
            data = TrainingData.from_frames(train_frame, val_frame, config)
            encoded.append(data)
        with trial_run(study, trial, mlflow_study, config.as_dict()) as run:
            pruner = PyTorchLightningPruningCallback(trial, monitor="val_exact_match")
            result = train_logic_model(train_frame, val_frame, config, seed=seed,
                                       loggers=[lightning_logger(run)], callbacks=[pruner], data=data,
                                       label=f"trial {trial.number}")
            trial.set_user_attr("steps", result.steps)
            trial.set_user_attr("wall_s", result.wall_s)
            return result.val_exact_match

    return optimize_to_budget(study, objective, n_trials, timeout_s)
