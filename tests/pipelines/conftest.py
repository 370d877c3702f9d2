"""A throw-away copy of the project (its git-tracked files) with CPU-tiny params, for end-to-end
runs of the real stages through dvc, mlflow and a real local DVC remote."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modules.studies.logic.data import parse_compact_prompt

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "data": {"seed": 0, "depth": 3, "logop_share": 0.8, "operators": ["and", "or"],
             "sizes": {"train": 400, "val": 80, "test": 120}},
    "validation": {"tolerance": 0.1},
    "activations": {"n_examples": 50, "batch_size": 20, "examples_per_shard": 30},
    "pairs": {"n_pairs": 20},
    "analysis": {"n_problems": 120, "probe_epochs": 20, "random_directions": 2, "random_controls": 1,
                 "batch_size": 64, "n_boot": 100},
    "seeds": [0],
    "train": {"n_embd": 24, "batch_size": 32, "max_steps": 8, "val_every": 4,
              "val_batch_size": 64},
    "tune": {"n_trials": 2, "timeout_s": 120, "trial_max_steps": 4, "storage": "sqlite:///optuna.db",
             "study_name": "logic-gpt2", "seed": 0,
             "space": {"lr": {"kind": "log_float", "values": [0.001, 0.01]}}},
}

# The LLM half on the real SmolLM2 (imported from its package), a few prompts and two fine-tuning steps.
TINY_LLM_PARAMS = {
    "prompts": {"n_pairs": 2},
    "fewshot": {"shots": [0], "operators": ["or"], "pairs": 2},
    "finetune": {"data": {"train_pairs": 4, "val_pairs": 2},
                 "train": {"max_steps": 2, "val_every": 1, "batch_size": 4, "val_batch_size": 4}},
    "study": {"sites": ["head_out"], "n_boot": 50, "random_controls": 1},
}
# Study 2 on the same model: a few items, two solved examples in the prompt, two subtasks analysed.
TINY_ONTOLOGY_PARAMS = {
    "data": {"items": 8, "false_items": 4, "onehop": 2},
    "behaviour": {"items": 6, "shots": 2},
    "heads": {"shots": 2, "subtasks": [8], "patch_items": 1, "lens_items": 2, "trace_items": 1, "mean_items": 2,
              "circuit_fractions": [0.1, 1.0], "random_sets": 1, "n_boot": 50},
    "probe_data": {"train_items": 12, "test_items": 6},
    "probes": {"epochs": 5, "hidden": 16, "n_boot": 50, "layers_per_fit": 31},
    "onehop": {"items": 1, "n_boot": 50},
}
TINY_HOPPING_PARAMS = {
    "graph": {"entities": {"person": 24, "city": 6, "work": 10, "company": 6}, "test_size": 20, "ood_fraction": 0.3,
              "phi": 2.0},
    "train": {"n_layer": 3, "d_model": 32, "n_head": 2, "max_steps": 40, "val_every": 20, "val_size": 200},
    "tune": {"n_trials": 2, "trial_max_steps": 10},
    "evaluate": {"max_queries": 40},
    "backpatch": {"incorrect_items": 1, "correct_items": 1, "positions": ["t2"], "pairs": [[2, 0], [2, 1]],
                  "controls": ["identity", "mismatched"], "n_boot": 50},
    "layers": {"items": 1, "target_stride": 15},
    "graph_layers": {"items": 1},
}
WHEELS = Path("artifacts/downloads/wheels")


def in_proof_order(prompt: str) -> bool:
    """Whether every rule's premises are concluded by rules written before it (or are sources)."""
    rules = parse_compact_prompt(prompt).rules
    concluded_at = {rule.conclusion: i for i, rule in enumerate(rules)}
    return all(concluded_at.get(p, -1) < i for i, rule in enumerate(rules) for p in rule.premises)


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Runs one stage's main() once per params.yaml text in a single process of the project copy (its
# imports once, not once a case), each as the stage's `python -m` entry would: run(main) with its
# argv; what it wrote to stderr, its exit code and whether ``out`` exists afterwards, as JSON.
_STAGE_VARIANTS = """
import contextlib, importlib, io, json, sys, traceback
from pathlib import Path
from modules.core.stage import run
module, args, texts, out = json.loads(sys.argv[1])
main, results = importlib.import_module(module).main, []
for text in texts:
    Path("params.yaml").write_text(text)
    sys.argv, err, code = [module, *args], io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            run(main)
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            code = -1
            traceback.print_exc(file=err)
    results.append({"returncode": code, "stderr": err.getvalue(), "out_exists": Path(out).exists()})
print(json.dumps(results))
"""


def stage_variants(project: Path, env: dict, module: str, args: list[str], params_texts: list[str],
                   out: str) -> list[dict]:
    """Each params.yaml text run through ``module``'s main() (see _STAGE_VARIANTS); params.yaml is
    left as it was."""
    import json

    original = (project / "params.yaml").read_text()
    try:
        proc = run(["python", "-c", _STAGE_VARIANTS, json.dumps([module, args, params_texts, out])], project, env)
    finally:
        (project / "params.yaml").write_text(original)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_project(dest: Path, tracking_uri: str | None = None, hardlinks: bool = False,
                 dvc_cache: Path | None = None, **overrides) -> tuple[Path, dict]:
    """Copy the tracked files to ``dest``, commit them in a new git repo, set tiny params.

    ``hardlinks``: DVC links cached outputs into the workspace instead of copying them (an imported
    LM is stored once, not in the workspace and again in the cache); ``dvc_cache``: a cache
    directory shared with other copies."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "data").mkdir(exist_ok=True)
    for name in ("logic_benchmark.parquet", "ontology_vocabulary.yaml", "hopping_world.yaml"):
        shutil.copy2(ROOT / "data" / name, dest / "data" / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        if isinstance(values, dict):
            params["logic"][section].update(values)
        else:
            params["logic"][section] = values
    for section, values in TINY_LLM_PARAMS.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params["logic_llm"][section][key].update(value)
            else:
                params["logic_llm"][section][key] = value
    for section, values in TINY_ONTOLOGY_PARAMS.items():
        params["ontology"][section].update(values)
    for section, values in TINY_HOPPING_PARAMS.items():
        params["hopping"][section].update(values)
    if (ROOT / WHEELS).is_dir():  # the packaged LMs' wheels, already fetched: linked, not downloaded again
        # (a test worker may be downloading one meanwhile: its temporary directory is not copied)
        shutil.copytree(ROOT / WHEELS, dest / WHEELS, copy_function=os.link, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".download-*"))
    for dotted, value in overrides.items():
        node = params["logic"]
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "GX_ANALYTICS_ENABLED": "False", "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{dest}/mlflow.db",
           "PYTHONPATH": str(dest)}
    for inherited in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(inherited, None)  # set in this process by earlier tests' mlflow.set_experiment
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run(cmd, dest, env)
    if hardlinks:
        run(["dvc", "config", "--local", "cache.type", "hardlink,copy"], dest, env)
    if dvc_cache is not None:
        run(["dvc", "config", "--local", "cache.dir", str(dvc_cache)], dest, env)
    return dest, env


def shared_dvc_cache(tmp_path_factory) -> Path:
    """One DVC cache for this pytest run's project copies, whichever worker makes them. Its run cache
    lets a copy restore a stage that another copy ran with the same code and params (the LM import)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-dvc-cache"


def ran_or_restored(stage: str, stdout: str) -> bool:
    """Whether `dvc repro` ran ``stage`` or restored its outputs from the run cache (a project copy
    sharing :func:`shared_dvc_cache` with one that ran it first, as a team sharing a cache does)."""
    return f"Running stage '{stage}'" in stdout or f"Stage '{stage}' is cached - skipping run" in stdout


def repro_in_copy(tmp_path_factory, name: str, *targets: str, timeout: int = 1800, share_cache: bool = False):
    """(project, env, result) of `dvc repro <targets>` in a fresh tiny project copy; ``share_cache``:
    with :func:`shared_dvc_cache`."""
    cache = shared_dvc_cache(tmp_path_factory) if share_cache else None
    project, env = make_project(tmp_path_factory.mktemp(name), hardlinks=True, dvc_cache=cache)
    return project, env, run(["dvc", "repro", *targets], project, env, timeout=timeout)


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory):
    """One full `dvc repro` of the tiny pipeline, shared by the tests that read its results."""
    return repro_in_copy(tmp_path_factory, "project")  # the timeout: two test workers share 2 cores
