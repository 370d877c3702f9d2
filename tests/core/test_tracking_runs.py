"""A run whose process was SIGKILLed stays RUNNING in MLflow; the next run of its stage marks it
KILLED, and leaves the runs of live processes alone."""
import os
import subprocess
import sys

import mlflow

from modules.core.tracking import close_dead_runs, tracked_run


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
