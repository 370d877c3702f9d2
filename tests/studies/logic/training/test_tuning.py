import multiprocessing

import mlflow
import optuna
import pytest

from modules.core.tracking import tracked_run
from modules.studies.logic.training.train import TrainConfig
from modules.studies.logic.training.tune import run_study
from modules.training.tuning import check_space
from tests.studies.logic.training.conftest import TINY

SPACE = {"lr": {"kind": "log_float", "values": [1e-3, 1e-2]}, "batch_size": {"kind": "choice", "values": [16, 32]}}


def test_study_resumes_to_its_trial_budget_with_nested_runs(small_splits, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    base = TrainConfig.from_params(TINY)
    kwargs = dict(timeout_s=None, storage=storage, study_name="s", seed=0, trial_max_steps=4,
                  mlflow_study="tuning-test")
    with tracked_run("tuning-test", "tune") as parent:
        first = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=2, **kwargs)
    assert len(first.trials) == 2
    # An interrupted or repeated study runs only the trials still missing from its budget.
    again = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=2, **kwargs)
    assert len(again.trials) == 2
    more = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=3, **kwargs)
    assert len(more.trials) == 3
    for trial in more.trials:
        assert 1e-3 <= trial.params["lr"] <= 1e-2 and trial.params["batch_size"] in (16, 32)
        assert trial.user_attrs["steps"] == 4
    assert more.study_name == first.study_name and more.study_name.startswith("s-")
    # Other settings never resume (or pollute) a study whose trials were scored differently.
    longer = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=1,
                       **{**kwargs, "trial_max_steps": 5})
    assert longer.study_name != first.study_name and len(longer.trials) == 1
    assert longer.trials[0].user_attrs["steps"] == 5
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tuning-test").experiment_id])
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in nested) == ["tune-trial-0", "tune-trial-1"]
    assert all("val_exact_match" in r.data.metrics for r in nested)
    # the dashboard and the MLflow UI name each other: run id on the trial, full study name on the runs
    assert {t.user_attrs["mlflow_run_id"] for t in first.trials if t.number < 2} == {r.info.run_id for r in nested}
    assert {r.data.tags["optuna_study"] for r in nested} == {first.study_name}
    assert client.get_run(parent.info.run_id).data.tags["optuna_study"] == first.study_name
    assert first.metric_names == ["val_exact_match"]


def test_trials_share_one_encoding_of_the_data(small_splits, tmp_path, monkeypatch):
    # Encoding the 200,000-row default split takes seconds; the trials of a study encode it once,
    # and again only for a trial whose settings change what is encoded.
    from modules.studies.logic.training.train import TrainingData
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    built = []
    original = TrainingData.from_frames.__func__

    def counting(cls, train_frame, val_frame, config):
        built.append(config.source_aux)
        return original(cls, train_frame, val_frame, config)

    monkeypatch.setattr(TrainingData, "from_frames", classmethod(counting))
    space = {**SPACE, "source_aux": {"kind": "choice", "values": [0.0, 1.0]}}
    with tracked_run("tuning-test", "tune"):
        study = run_study(small_splits["train"], small_splits["val"], TrainConfig.from_params(TINY), space,
                          n_trials=4, timeout_s=None, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s",
                          seed=0, trial_max_steps=2, mlflow_study="tuning-test")
    chosen = [bool(t.params["source_aux"]) for t in study.trials]
    assert len(chosen) == 4 and set(chosen) == {False, True}  # both kinds of data were asked for
    assert sorted(set(map(bool, built))) == [False, True]
    assert len(built) == len(set(chosen))  # one encoding per distinct kind of data, not per trial


def _tuning_worker(barrier, splits, storage: str, mlflow_uri: str) -> None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    for inherited in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # the parent's store
        os.environ.pop(inherited, None)
    barrier.wait()  # both workers read the empty study before either finishes a trial
    run_study(splits["train"], splits["val"], TrainConfig.from_params(TINY), SPACE, n_trials=2, timeout_s=None,
              storage=storage, study_name="shared", seed=0, trial_max_steps=4, mlflow_study="tuning-test")


def test_workers_sharing_a_study_stop_at_its_trial_budget(small_splits, tmp_path):
    # Two workers on one study (as side-by-side `dvc exp run --temp` tuning stages are) share its
    # budget: each may finish the trial it started, but neither runs a full budget of its own (4).
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(storage)  # the shared database exists first (two workers creating it race)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_tuning_worker, args=(barrier, dict(small_splits), storage,
                                                            f"sqlite:///{tmp_path}/mlflow{i}.db"))
               for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith("shared-") and summary.n_trials in (2, 3)


@pytest.mark.parametrize("space,message", [
    ({"nope": {"kind": "choice", "values": [1]}}, "'nope' is not a tunable train key"),
    ({"lr": {"kind": "normal", "values": [0, 1]}}, r"tune.space.lr.kind must be one of"),
    ({"lr": {"kind": "float", "values": [1]}}, r"tune.space.lr.values must be \[low, high\]"),
])
def test_bad_search_space_is_rejected(space, message):
    with pytest.raises(ValueError, match=message):
        check_space(space, TrainConfig)


@pytest.mark.parametrize("timeout_s", [0, -5, "soon"])
def test_bad_timeout_is_rejected(small_splits, tmp_path, timeout_s):
    with pytest.raises(ValueError, match="tune.timeout_s must be null or a number > 0"):
        run_study(small_splits["train"], small_splits["val"], TrainConfig.from_params(TINY), SPACE, n_trials=1,
                  timeout_s=timeout_s, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", seed=0,
                  trial_max_steps=1, mlflow_study="tuning-test")


def test_the_steps_objective_minimises_and_reports_every_validation_at_its_step(small_splits, tmp_path, monkeypatch):
    """steps_to_perfect: a study that minimises; each validation reaches the pruner at its optimizer
    step (as 1 - exact match), and a trial that never scores perfectly pays the budget and more."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    base = TrainConfig.from_params({**TINY, "val_every": 3})
    with tracked_run("tuning-test", "tune"):
        study = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=2, timeout_s=None,
                          storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", seed=0, trial_max_steps=9,
                          mlflow_study="tuning-test", objective="steps_to_perfect", pruner="none")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.metric_names == ["steps_to_perfect"]
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [3, 6, 9]  # Optuna's own callback reported all at step 0
        error = trial.intermediate_values[9]
        assert error > 0 and trial.value == pytest.approx(9 * (1 + error))  # 9 * (2 - last exact match)


def test_hyperband_stops_trials_at_validations_within_the_step_budget(small_splits, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    from modules.studies.logic.training.tune import make_pruner

    pruner = make_pruner("hyperband", 3, 12)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource) == (3, 12)
    base = TrainConfig.from_params({**TINY, "val_every": 3})
    with tracked_run("tuning-test", "tune"):
        study = run_study(small_splits["train"], small_splits["val"], base, SPACE, n_trials=6, timeout_s=None,
                          storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", seed=0, trial_max_steps=12,
                          mlflow_study="tuning-test", objective="steps_to_perfect", pruner="hyperband",
                          min_steps=3)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.COMPLETE in states
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:  # stopped at a validation short of the budget
            assert max(trial.intermediate_values) < 12 and trial.user_attrs["steps"] == max(trial.intermediate_values)


@pytest.mark.parametrize("change,message", [
    ({"objective": "loss"}, r"tune.objective must be one of \['val_exact_match', 'steps_to_perfect'\], got 'loss'"),
    ({"pruner": "asha"}, r"tune.pruner must be one of \['median', 'hyperband', 'none'\], got 'asha'"),
    ({"pruner": "hyperband", "min_steps": 50}, r"tune.min_steps must be in \[1, tune.trial_max_steps=4\], got 50"),
])
def test_bad_objective_or_pruner_is_rejected(small_splits, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_study(small_splits["train"], small_splits["val"], TrainConfig.from_params(TINY), SPACE, n_trials=1,
                  timeout_s=None, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", seed=0,
                  trial_max_steps=4, mlflow_study="tuning-test", **change)
