"""Optuna study over training hyper-parameters, pruned through Lightning, one nested MLflow run a trial."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping

import optuna
import pandas as pd

from modules.core.tracking import lightning_logger
from modules.studies.logic.training.train import TrainConfig, TrainingData, train_logic_model
from modules.training.tuning import StepPruning, check_space, open_study, optimize_to_budget, suggest, trial_run

# What a trial scores (tune.objective):
# - val_exact_match: the last validation's exact match, maximised (a fixed budget's accuracy);
# - steps_to_perfect: the optimizer steps to the first perfect validation, minimised; a trial that
#   never gets there within trial_max_steps scores trial_max_steps * (2 - its last score), above any
#   that does, nearer the budget the closer it came.
OBJECTIVES = ("val_exact_match", "steps_to_perfect")
PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str, min_steps: int, max_steps: int) -> optuna.pruners.BasePruner:
    """Median stopping, or Hyperband (successive halving over brackets) with the optimizer step as
    the resource, from ``min_steps`` to the trial's whole schedule."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_steps, max_resource=max_steps, reduction_factor=3)
    return optuna.pruners.NopPruner()


def trial_score(objective: str, result, max_steps: int) -> float:
    if objective == "val_exact_match":
        return result.val_exact_match
    if result.step_to_perfect_val is not None:
        return float(result.step_to_perfect_val)
    return max_steps * (2.0 - result.val_exact_match)


def settings_fingerprint(train_frame, val_frame, base: TrainConfig, space: Mapping[str, Any],
                         trial_max_steps: int, seed: int, **scoring: Any) -> str:
    """Short hash of everything a trial's score depends on (data, training settings, search space,
    trial length, seed, ``scoring``: the objective and pruning), but not of the budget (trial count,
    timeout) or where it runs."""
    execution = {"accelerator", "devices", "strategy", "threads"}
    settings = {k: v for k, v in base.as_dict().items() if k not in execution}
    digest = hashlib.sha256(json.dumps({"train": settings, "space": space, "trial_max_steps": trial_max_steps,
                                        "seed": seed, **scoring}, sort_keys=True, default=str).encode())
    for frame in (train_frame, val_frame):
        digest.update(pd.util.hash_pandas_object(frame[["prompt", "answer"]], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:10]


def run_study(train_frame, val_frame, base: TrainConfig, space: Mapping[str, Mapping[str, Any]], *,
              n_trials: int, timeout_s: float | None, storage: str, study_name: str, seed: int,
              trial_max_steps: int, mlflow_study: str, objective: str = "val_exact_match",
              pruner: str = "median", min_steps: int = 250) -> optuna.Study:
    """Run a study of ``objective`` (OBJECTIVES) until it holds ``n_trials`` finished trials,
    counting those of other workers on the same study; ``pruner`` (PRUNERS) stops trials early on
    their validation scores, reported at each validation's optimizer step.

    The study lives in ``storage`` (any SQLAlchemy URL: sqlite by default, a relative path read from
    the project root; a shared RDB for several workers) as ``<study_name>-<settings fingerprint>``
    and is resumed with ``load_if_exists``: the same settings resume, other data or settings start a
    new study, so a study never mixes trials whose scores cannot be compared.
    """
    check_space(space, TrainConfig)
    if objective not in OBJECTIVES:
        raise ValueError(f"tune.objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if pruner not in PRUNERS:
        raise ValueError(f"tune.pruner must be one of {list(PRUNERS)}, got {pruner!r}")
    if pruner == "hyperband" and not 0 < min_steps <= trial_max_steps:
        raise ValueError(f"tune.min_steps must be in [1, tune.trial_max_steps={trial_max_steps}], got {min_steps!r}")
    if n_trials < 1:  # before the study is opened
        raise ValueError(f"tune.n_trials must be >= 1, got {n_trials}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"tune.timeout_s must be null or a number > 0, got {timeout_s!r}")
    fingerprint = settings_fingerprint(train_frame, val_frame, base, space, trial_max_steps, seed,
                                       objective=objective, pruner=pruner, min_steps=min_steps)
    minimise = objective == "steps_to_perfect"
    study = open_study(f"{study_name}-{fingerprint}", storage, seed, objective,
                       pruner=make_pruner(pruner, min_steps, trial_max_steps),
                       direction="minimize" if minimise else "maximize")

    encoded: list[TrainingData] = []  # encoding 200,000 rows takes seconds; trials share it

    def objective(trial: optuna.Trial) -> float:
        # a trial is judged on its own seed: no restarts (the pruner stops what does not learn)
        config = replace(base, **suggest(trial, space), max_steps=trial_max_steps, stop_on_perfect=True,
                         query_check_step=0, perfect_check_step=0)
        TrainConfig.from_params(config.as_dict())  # range-check the sampled values
        data = next((d for d in encoded if d.suits(config)), None)
        if data is None:
            data = TrainingData.from_frames(train_frame, val_frame, config)
            encoded.append(data)
        with trial_run(study, trial, mlflow_study, config.as_dict()) as run:
            pruning = StepPruning(trial, "val_exact_match", lower_is_better=minimise)
            result = train_logic_model(train_frame, val_frame, config, seed=seed,
                                       loggers=[lightning_logger(run)], callbacks=[pruning], data=data,
                                       label=f"trial {trial.number}")
            trial.set_user_attr("steps", result.steps)
            trial.set_user_attr("wall_s", result.wall_s)
            if pruning.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
            return trial_score(objective, result, trial_max_steps)

    return optimize_to_budget(study, objective, n_trials, timeout_s)
