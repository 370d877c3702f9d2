"""A readable `dvc status`: one line a pipeline, saying which of its stages would run and why.

Bare `dvc status` checks every dvc.yaml in the repository, the 7B pipeline's too, which runs on GPU
hosts only, so it never looks clean on a laptop. `python -m modules.core.pipeline_status` (`make status`)
names each pipeline with the make target that runs it and marks the never-run ones as such.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

# (dvc.yaml, what runs it)
PIPELINES = (("dvc.yaml", "make pipeline"), ("pipelines/ontology/dvc.yaml", "make ontology"),
             ("pipelines/hopping/dvc.yaml", "make hopping"),
             ("pipelines/llm/dvc.yaml", "7B models, on a GPU host: dvc repro pipelines/llm/dvc.yaml"))


def stage_states(status: dict, locked: set[str]) -> dict[str, str]:
    """stage -> "never run" (not in the pipeline's dvc.lock) or "stale" (a changed dependency or output)."""
    names = (stage.split(":", 1)[-1] for stage in status)
    return {name: "stale" if name in locked else "never run" for name in names}


def locked_stages(pipeline: str) -> set[str]:
    lock = Path(pipeline).with_name("dvc.lock")
    return set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else set()


def describe(pipeline: str, runner: str, states: dict[str, str]) -> str:
    if not states:
        return f"{pipeline}: up to date"
    never = [stage for stage, state in states.items() if state == "never run"]
    stale = [stage for stage, state in states.items() if state == "stale"]
    parts = ([f"{len(stale)} stale ({', '.join(stale)})"] if stale else []) + (
        [f"{len(never)} never run ({', '.join(never)})"] if never else [])
    return f"{pipeline}: {'; '.join(parts)} -> {runner}"


def main() -> int:
    for pipeline, runner in PIPELINES:
        proc = subprocess.run(["dvc", "status", "--json", pipeline], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{pipeline}: dvc status failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        print(describe(pipeline, runner, stage_states(json.loads(proc.stdout or "{}"), locked_stages(pipeline))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
