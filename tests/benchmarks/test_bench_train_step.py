"""The step-time benchmark: its steps train the model, and its figures land in an MLflow run."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

from modules.studies.logic.data import splits_from_params
from modules.studies.logic.training.timing import StepTimer
from modules.studies.logic.training.train import TrainConfig, TrainingData

REPO = Path(__file__).resolve().parents[2]


def test_timed_steps_update_the_model_and_take_positive_time():
    data = {"seed": 0, "depth": 3, "logop_share": 0.8, "operators": ["and", "or"], "prompt_end": "answer",
            "rule_order": "shuffled", "query_twins": [], "sizes": {"train": 64, "val": 16, "test": 16}}
    splits = splits_from_params(data)
    config = TrainConfig(batch_size=16, max_steps=10, source_aux=1.0)
    data = TrainingData.from_frames(splits["train"], splits["val"], config)
    timer = StepTimer(config, 0, data.train, data.val, data.groups, n_batches=4)
    before = [p.detach().clone() for p in timer.module.parameters()]
    assert timer(0, 2) > 0
    after = list(timer.module.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


def test_the_benchmark_logs_one_median_per_variant(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train_step", "--activations", "gelu", "gelu_new",
         "--passes", "shared", "plain", "--attention", "sdpa",
         "--reps", "2", "--steps", "1", "--warmup", "0", "--train-size", "64", "--threads", "1",
         "--set", "logic.train.batch_size=16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "gelu_new/shared/sdpa:" in result.stdout and "x gelu_new/plain/sdpa" in result.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.benchmark = 'train_step'")
    assert len(runs) == 1
    logged = {c for c in runs.columns if c.startswith("metrics.step_s_")}
    assert logged == {f"metrics.step_s_{a}_{p}_sdpa" for a in ("gelu", "gelu_new") for p in ("shared", "plain")}
    assert all(runs[c].iloc[0] > 0 for c in logged)


def test_bad_counts_are_one_line_errors():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_train_step", "--reps", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --reps, --steps and --threads must be >= 1 and --warmup >= 0"]
