"""MLflow helpers shared by every stage: one experiment per study, stage-named runs,
git commit and data hashes on every run.

The default store is ``sqlite:///<repo>/mlflow.db`` (MLflow 3 refuses a bare ./mlruns
file store); ``MLFLOW_TRACKING_URI`` overrides it, e.g. with a team server.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from modules.core.checksums import CHECKSUMS, file_digest, read_checksums

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import mlflow  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """Where the project's local stores live (mlflow.db, mlartifacts/, optuna.db).

    A stage run by DVC gets ``DVC_ROOT``, which names the user's workspace even when the experiment
    runs in a temporary copy (``dvc exp run --temp`` or ``--queue``) that DVC deletes afterwards.
    """
    return Path(os.environ.get("DVC_ROOT") or REPO_ROOT)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def in_project(storage_url: str) -> str:
    """A relative sqlite URL (``sqlite:///optuna.db``) resolved against :func:`project_root`."""
    prefix = "sqlite:///"
    if storage_url.startswith(prefix) and not Path(storage_url[len(prefix):]).is_absolute():
        return f"{prefix}{project_root() / storage_url[len(prefix):]}"
    return storage_url


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_hash(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the bytes of the given files (directories: every file inside, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.name).encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def local_store(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` tracking URI; None for a server or another store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def artifact_root(uri: str) -> Path | None:
    """Where a local sqlite store keeps its artifacts: ``mlartifacts/`` beside the database file, so
    that a test's or a copy's temporary store never writes into the workspace's."""
    store = local_store(uri)
    return store.parent / "mlartifacts" if store is not None else None


# The tables that hold an absolute artifact location (MLflow resolves every local one to an absolute URI).
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


def relocate_artifacts(uri: str) -> int:
    """After the workspace moved (a renamed or copied clone): point every artifact location of the
    local sqlite store that lay in an ``mlartifacts/`` folder elsewhere at the one beside the database.
    Returns the number of experiments moved."""
    import sqlite3

    store, root = local_store(uri), artifact_root(uri)
    if store is None or not store.is_file():
        return 0
    new = root.as_uri()
    with sqlite3.connect(store) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
        if "experiments" not in tables:
            return 0  # a store MLflow has not set up yet
        moved = [row[0] for row in db.execute("select artifact_location from experiments")
                 if row[0] and row[0].startswith("file://") and row[0].endswith("/mlartifacts") and row[0] != new]
        for old in moved:
            for table, column in _LOCATION_COLUMNS:
                if table in tables:
                    db.execute(f"update {table} set {column} = ? || substr({column}, ?) where {column} = ? "
                               f"or {column} like ? escape '\\'", (new, len(old) + 1, old, _like_prefix(old + "/")))
    return len(moved)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def ensure_experiment(study: str, uri: str) -> None:
    """Select experiment ``study``; a local sqlite store keeps its artifacts beside it (:func:`artifact_root`),
    relocated there first if the workspace moved."""
    root = artifact_root(uri)
    if root is not None:
        relocate_artifacts(uri)
        if mlflow.get_experiment_by_name(study) is None:
            try:
                mlflow.create_experiment(study, artifact_location=root.as_uri())
            except mlflow.exceptions.MlflowException:
                pass  # another process created it first
    mlflow.set_experiment(study)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def close_dead_runs(study: str, stage: str) -> list[str]:
    """Mark KILLED the runs of ``stage`` that this machine started and whose process is gone (a
    SIGKILL leaves them RUNNING forever); their ids. Runs of live processes are left alone."""
    experiment = mlflow.get_experiment_by_name(study)
    if experiment is None:
        return []
    client = mlflow.MlflowClient()
    stale = client.search_runs([experiment.experiment_id],
                               f"attributes.status = 'RUNNING' and tags.stage = '{stage}' "
                               f"and tags.host = '{socket.gethostname()}'")
    dead = [r.info.run_id for r in stale if not _alive(int(r.data.tags.get("pid", "0") or 0))]
    for run_id in dead:
        client.set_terminated(run_id, status="KILLED")
    return dead


@contextmanager
def tracked_run(study: str, stage: str, params: Mapping[str, Any] | None = None,
                data_paths: Iterable[str | os.PathLike] = (), nested: bool = False,
                tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run in experiment ``study`` named ``stage``.

    Logs the git commit, a hash of each data path read, and the flattened params.
    A nested run (an Optuna trial, say) hangs under the active run.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    # Under `mlflow run`, the project run already exists (MLFLOW_RUN_ID): log into it.
    launched = bool(os.environ.get("MLFLOW_RUN_ID")) and not nested and mlflow.active_run() is None
    if not nested and not launched:
        ensure_experiment(study, uri)
        close_dead_runs(study, stage)
    run_tags = {"git_commit": git_commit(), "stage": stage, "host": socket.gethostname(), "pid": str(os.getpid()),
                **(tags or {})}
    with mlflow.start_run(run_name=stage, nested=nested, tags=run_tags) as run:
        if launched:
            mlflow.set_tag("mlflow.runName", stage)
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        for path in data_paths:
            if Path(path).exists():
                mlflow.log_param(f"data_hash.{Path(path).name}", data_hash([path]))
                log_data_inputs(Path(path))
        yield run


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}


def dvc_md5(path: Path) -> str:
    """A file's hash as DVC 3 records it (the md5 of its bytes) in dvc.lock and the cache."""
    return file_digest(path, "md5")


def log_data_inputs(path: Path) -> None:
    """Into the active run: each Parquet table read (``path`` or the tables in it) as an MLflow dataset
    named for its file, digest its DVC md5, so that the UI's Dataset column shows which split at which
    version fed the run; a model directory read links the run to the run that trained it
    (:func:`link_trained_model`)."""
    import warnings

    import pandas as pd

    if path.is_dir() and (path / CHECKSUMS).is_file() and (path / "config.json").is_file():
        link_trained_model(path)
        return
    tables = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.suffix == ".parquet" else []
    for table in tables:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow: "the source can be interpreted in multiple ways"
            dataset = mlflow.data.from_pandas(pd.read_parquet(table), source=str(table), name=table.stem,
                                              digest=dvc_md5(table))
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS.get(table.stem, "input"))


WEIGHTS_TAG = "weights_sha256"   # on a training run: the sha256 of the model.safetensors it saved


def weights_sha256(model_dir: Path) -> str | None:
    return read_checksums(model_dir).get("model.safetensors")


def log_trained_model(model, tokenizer, model_dir: Path, registered_name: str) -> str:
    """Into the active (training) run: the saved model as an MLflow transformers model, registered as
    ``registered_name`` (a new version), the run and the version tagged with its weights' sha256;
    the model's URI."""
    import torch
    import transformers

    weights = weights_sha256(model_dir)
    run = mlflow.active_run()
    mlflow.set_tag(WEIGHTS_TAG, weights)
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task="text-generation", registered_model_name=registered_name,
                                         pip_requirements=requirements)
    client = mlflow.MlflowClient()
    for key, value in ((WEIGHTS_TAG, weights), ("training_run_id", run.info.run_id)):
        client.set_model_version_tag(registered_name, info.registered_model_version, key, value)
    return info.model_uri


def link_trained_model(model_dir: Path) -> None:
    """Tag the active run with the training run and the registered model version of the weights in
    ``model_dir`` (matched by sha256), where this store holds them."""
    weights = weights_sha256(model_dir)
    if weights is None:
        return
    client = mlflow.MlflowClient()
    experiment = mlflow.active_run().info.experiment_id
    trained = client.search_runs([experiment], f"tags.{WEIGHTS_TAG} = '{weights}'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not trained:
        return
    training_run = trained[0].info.run_id
    mlflow.set_tags({"model_training_run_id": training_run, f"model_{WEIGHTS_TAG}": weights})
    versions = client.search_model_versions(f"run_id = '{training_run}'")
    if versions:
        mlflow.set_tag("model_uri", f"models:/{versions[0].name}/{versions[0].version}")


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_dict(obj if isinstance(obj, (dict, list)) else json.loads(json.dumps(obj)), artifact_file)


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_table(frame, artifact_file: str) -> None:
    """Log a pandas DataFrame as a CSV artifact (long format tables of effects, say)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None)


def log_tensors(tensors: Mapping[str, Any], artifact_file: str) -> None:
    """Log a dict of tensors as one safetensors artifact."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        parent = Path(artifact_file).parent
        mlflow.log_artifact(str(path), artifact_path=str(parent) if parent != Path(".") else None)


def lightning_logger(run: mlflow.ActiveRun):
    """A Lightning MLFlowLogger that writes into an already open run (curves next to params), without
    Lightning's ``epoch`` metric: the lab trains on step budgets over endless batch streams, one epoch.
    Hyperparameters add only the keys the run does not hold yet: the run logged its settings when it
    opened, and a training restarted inside it (a new seed) must not try to change them (MLflow
    refuses; the restart's seed is tagged instead)."""
    from lightning.pytorch.loggers import MLFlowLogger

    class StepLogger(MLFlowLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

        def log_hyperparams(self, params):
            params = dict(params) if isinstance(params, Mapping) else dict(vars(params))
            held = self.experiment.get_run(self.run_id).data.params
            new = {k: v for k, v in params.items() if k not in held}
            if new:
                super().log_hyperparams(new)

    return StepLogger(tracking_uri=tracking_uri(), run_id=run.info.run_id,
                      experiment_name=mlflow.get_experiment(run.info.experiment_id).name)
