"""A stage killed midway leaves no output that DVC would take as done, and keeps what resumes it."""
import signal
import subprocess
import time

from tests.pipelines.conftest import make_project, run


def test_killed_training_leaves_no_partial_outputs(tmp_path):
    project, env = make_project(tmp_path, train__max_steps=100000, train__val_every=2)
    run(["python", "-m", "pipelines.logic.generate", "--out", "artifacts/logic/data"], project, env)
    summary = project / "artifacts/logic/train/seed0.json"  # the committed run's (cache: false): left as it was
    committed = summary.read_bytes()
    proc = subprocess.Popen(["python", "-m", "pipelines.logic.train", "--seed", "0", "--data", "artifacts/logic/data", "--out", "artifacts/logic"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = project / "artifacts/logic/checkpoints/seed0/last.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert checkpoint.exists(), "training never wrote a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (project / "artifacts/logic/models/seed0").exists()
    assert summary.read_bytes() == committed
    leftovers = [p.name for p in (project / "artifacts/logic").rglob(".*tmp*")]
    assert leftovers == []
    status = run(["dvc", "status", "train_logic@0"], project, env).stdout
    assert "changed outs" in status or "deleted" in status or "not in cache" in status, status
    assert checkpoint.exists()  # persisted: the next `dvc repro` resumes from it
