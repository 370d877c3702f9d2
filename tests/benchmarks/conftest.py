"""The benchmarks run as programs here (``python -m benchmarks.X``), as a user runs them: the tests
read what they print and write, and import nothing from benchmarks/."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout)
