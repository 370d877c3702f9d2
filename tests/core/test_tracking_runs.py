"""A run whose process was SIGKILLed stays RUNNING in MLflow; the next run of its stage marks it
KILLED, and leaves the runs of live processes alone."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow

from modules.core.tracking import close_dead_runs, relocate_artifacts, tracked_run


def test_dead_runs_are_marked_killed_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # a stage process that dies with its run open, as SIGKILL leaves it
    code = ("from modules.core.tracking import tracked_run\nimport os\n"
            "with tracked_run('study-x', 'train-seed0'):\n    os._exit(9)\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 9
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    dead = mlflow.search_runs(experiment_names=["study-x"])
    assert list(dead["status"]) == ["RUNNING"]
    with tracked_run("study-x", "train-seed0") as live:
        assert close_dead_runs("study-x", "train-seed0") == []  # this process is alive
        runs = mlflow.search_runs(experiment_names=["study-x"]).set_index("run_id")
        assert runs.loc[dead["run_id"][0], "status"] == "KILLED"
        assert runs.loc[live.info.run_id, "status"] == "RUNNING"
    assert mlflow.get_run(live.info.run_id).info.status == "FINISHED"


def test_a_store_keeps_its_artifacts_beside_it_and_follows_a_moved_workspace(tmp_path, monkeypatch):
    """Artifacts go to mlartifacts/ beside the sqlite file (never into another workspace's), and a
    moved workspace's store points at the moved folder at its next run, so the UI still finds them."""
    old, new = tmp_path / "clone", tmp_path / "moved"
    old.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{old / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with tracked_run("study-y", "report") as first:
        mlflow.log_dict({"n": 1}, "summary.json")
    assert (old / "mlartifacts" / first.info.run_id / "artifacts" / "summary.json").is_file()
    old.rename(new)
    uri = f"sqlite:///{new / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracked_run("study-y", "report"):  # any stage's run relocates the store first
        pass
    client = mlflow.MlflowClient(uri)
    assert client.get_experiment_by_name("study-y").artifact_location == (new / "mlartifacts").as_uri()
    assert client.get_run(first.info.run_id).info.artifact_uri == (new / "mlartifacts" / first.info.run_id
                                                                   / "artifacts").as_uri()
    assert Path(client.download_artifacts(first.info.run_id, "summary.json", str(tmp_path))).read_text() == '{\n  "n": 1\n}'
    assert relocate_artifacts(uri) == 0  # nothing left to move
