"""An experiment that DVC runs in a temporary copy (`dvc exp run --temp`, or `--queue`) logs to the
user's own MLflow store and Optuna study, not to files in the copy, which DVC deletes afterwards."""
from __future__ import annotations

from pathlib import Path

import mlflow
import optuna

from modules.core.tracking import REPO_ROOT, in_project, project_root, tracking_uri
from tests.pipelines.conftest import make_project, run


def test_local_stores_follow_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_root() == REPO_ROOT
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert in_project("sqlite:///optuna.db") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert in_project("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    assert in_project("postgresql://user@host/optuna") == "postgresql://user@host/optuna"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_a_temp_experiment_logs_to_the_workspace_stores(tmp_path):
    project, env = make_project(tmp_path)
    del env["MLFLOW_TRACKING_URI"]  # the default store, as a user who set nothing has
    run(["dvc", "exp", "run", "--temp", "-n", "temp-tune", "tune_logic"], project, env, timeout=600)
    assert not list(Path(project, ".dvc/tmp/exps/standalone").glob("tmp*")), "the temporary copy is kept"
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("propositional-logic")
    assert experiment.artifact_location == (project / "mlartifacts").as_uri()
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"generate", "validate", "tune", "tune-trial-0", "tune-trial-1"} <= set(runs)
    tune = runs["tune"]
    assert [a.path for a in client.list_artifacts(tune.info.run_id)] == ["best_params.yaml"]
    assert Path(tune.info.artifact_uri.removeprefix("file://"), "best_params.yaml").is_file()
    studies = optuna.get_all_study_names(f"sqlite:///{project}/optuna.db")
    assert len(studies) == 1 and studies[0].startswith("logic-gpt2-")
