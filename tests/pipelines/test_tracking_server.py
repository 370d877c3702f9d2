"""Stages log to a real `mlflow server` on 127.0.0.1, and `mlflow run` drives the MLproject."""
import hashlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.pipelines.conftest import BIN, make_project, run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield url, tmp_path / "server-artifacts"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_stages_log_to_a_real_tracking_server(tmp_path, mlflow_server):
    url, artifact_root = mlflow_server
    project, env = make_project(tmp_path / "p", tracking_uri=url)
    run(["python", "-m", "pipelines.logic.generate", "--out", "artifacts/logic/data"], project, env)
    run(["python", "-m", "pipelines.logic.validate", "--data", "artifacts/logic/data", "--benchmark", "data/logic_benchmark.parquet", "--docs", "reports/data_docs/logic", "--summary", "artifacts/logic/validation.json"], project, env)
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("propositional-logic")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["generate"].data.metrics["rows_train"] == 400
    assert runs["validate"].data.metrics["validation_success"] == 1.0
    # Artifacts travel through the server into its artifact store, not the project folder.
    assert "validation.json" in {a.path for a in client.list_artifacts(runs["validate"].info.run_id)}
    assert any(p.name == "validation.json" for p in artifact_root.rglob("*"))
    assert not (project / "mlartifacts").exists()
    # the server's artifact paths are relative to its store: a moved server directory keeps them
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")

    # training logs the model as an MLflow model, registered, and its splits as datasets; evaluation links to it
    run(["python", "-m", "pipelines.logic.train", "--seed", "0", "--data", "artifacts/logic/data", "--out",
         "artifacts/logic"], project, env)
    run(["python", "-m", "pipelines.logic.evaluate", "--seed", "0", "--data", "artifacts/logic/data", "--benchmark",
         "data/logic_benchmark.parquet", "--out", "artifacts/logic"], project, env)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    train, evaluate = runs["train-seed0"], runs["evaluate-seed0"]
    weights = project / "artifacts/logic/models/seed0/model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert train.data.tags["weights_sha256"] == sha
    inputs = {d.dataset.name: d for d in train.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    for name, context in (("train", "training"), ("val", "validation")):
        table = project / f"artifacts/logic/data/{name}.parquet"
        assert inputs[name].dataset.digest == hashlib.md5(table.read_bytes()).hexdigest()  # DVC's hash of it
        assert {t.key: t.value for t in inputs[name].tags}["mlflow.data.context"] == context
    version, = client.search_model_versions("name = 'propositional-logic-gpt2'")
    assert version.run_id == train.info.run_id and version.tags == {"weights_sha256": sha,
                                                                    "training_run_id": train.info.run_id}
    location = client.get_model_version_download_uri("propositional-logic-gpt2", version.version)
    downloaded = mlflow.artifacts.download_artifacts(location, dst_path=str(tmp_path / "model"), tracking_uri=url)
    assert hashlib.sha256(next(Path(downloaded).rglob("model.safetensors")).read_bytes()).hexdigest() == sha
    assert evaluate.data.tags["model_training_run_id"] == train.info.run_id
    assert evaluate.data.tags["model_uri"] == f"models:/propositional-logic-gpt2/{version.version}"
    assert {d.dataset.name for d in evaluate.inputs.dataset_inputs} == {"test", "logic_benchmark"}


def test_mlproject_entry_point_runs_with_local_env_manager(tmp_path):
    project, env = make_project(tmp_path / "p")
    proc = run(["mlflow", "run", ".", "-e", "generate_logic", "--env-manager", "local",
                "--experiment-name", "propositional-logic"], project, env, timeout=600)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, proc.stderr[-2000:]  # the project run and the stage run are one
    assert runs[0].info.run_name == "generate" and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["seed"] == "0" and runs[0].data.metrics["rows_train"] == 400
    assert (project / "artifacts/logic/data/train.parquet").is_file()
