"""Tuning shared by every study that tunes a training run: an Optuna search space in params.yaml,
checked against a training config's tunable keys and sampled per trial; the study in its RDB storage,
resumed to its trial budget; one nested MLflow run a trial, the run and the trial naming each other."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Callable, Iterator, Mapping

import mlflow
import optuna
from lightning.pytorch.callbacks import Callback

from modules.core.tracking import in_project, tracked_run

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


def open_study(name: str, storage: str, seed: int, metric: str, pruner: optuna.pruners.BasePruner | None = None,
               direction: str = "maximize") -> optuna.Study:
    """The study ``name`` in ``storage`` (any SQLAlchemy URL; a relative sqlite path is read from the
    project root), created or resumed with its trials, optimising ``metric`` (the objective's name in
    the dashboard) in ``direction``. The active MLflow run, if any, is tagged with the study's name and
    storage."""
    study = optuna.create_study(study_name=name, storage=in_project(storage), load_if_exists=True,
                                direction=direction, sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    study.set_metric_names([metric])
    if mlflow.active_run() is not None:
        mlflow.set_tags({"optuna_study": name, "optuna_storage": storage})
    return study


class StepPruning(Callback):
    """Report a validation score to an Optuna trial at the optimizer step, and stop the run when the
    study's pruner says so (``pruned_at`` then holds the step; raise ``optuna.TrialPruned`` after the
    fit). Optuna's own Lightning callback reports at the epoch: these trainings run one endless epoch,
    so every report after the first landed on step 0 and was dropped. ``lower_is_better``: report
    ``1 - score``, for a study that minimises."""

    def __init__(self, trial: optuna.Trial, monitor: str, lower_is_better: bool = False):
        self.trial, self.monitor, self.lower_is_better = trial, monitor, lower_is_better
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None:
            return
        self.trial.report(1.0 - float(score) if self.lower_is_better else float(score), step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True


@contextmanager
def trial_run(study: optuna.Study, trial: optuna.Trial, mlflow_study: str, params: Mapping[str, Any]
              ) -> Iterator[mlflow.ActiveRun]:
    """The trial's nested MLflow run ``tune-trial-<n>``, tagged with the study's full name and the
    trial's number; the trial records the run's id (``mlflow_run_id``), so each finds the other."""
    with tracked_run(mlflow_study, f"tune-trial-{trial.number}", params, nested=True,
                     tags={"optuna_study": study.study_name, "optuna_trial": str(trial.number)}) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        yield run


def optimize_to_budget(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
                       timeout_s: float | None = None) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished ones, counting those of earlier runs
    and of other workers on the same storage (each may finish the trial it has started): an
    interrupted study resumes with only the missing trials."""
    if n_trials < 1:
        raise ValueError(f"tune.n_trials must be >= 1, got {n_trials}")
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout_s, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=done)])
    return study
