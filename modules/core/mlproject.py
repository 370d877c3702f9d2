"""MLproject, generated from the DVC pipelines so that every stage's command and paths are written
once (in dvc.yaml). `python -m modules.core.mlproject` rewrites it; a test checks it is current.

Each stage becomes an entry point with the same command; a ``foreach`` stage's ``${item}`` becomes
the ``seed`` parameter (or ``model``, over model names), and any other ``${section.key}`` a parameter defaulting to params.yaml's value.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from modules.core.params import ROOT, read_params

PIPELINES = ("dvc.yaml", "pipelines/llm/dvc.yaml", "pipelines/ontology/dvc.yaml", "pipelines/hopping/dvc.yaml")
HEADER = """# Generated from dvc.yaml and pipelines/{llm,ontology,hopping}/dvc.yaml by `python -m modules.core.mlproject`; do not edit.
# Each stage is an entry point, e.g.
#   mlflow run . -e train_logic -P seed=1 --env-manager local --experiment-name propositional-logic
# `dvc repro` remains the way to run a whole pipeline with caching.
"""


def _lookup(params: dict, dotted: str):
    node = params
    for key in dotted.split("."):
        node = node[key]
    return node


def entry_points(root: Path = ROOT) -> dict:
    params = read_params(root / "params.yaml")
    points: dict = {"main": {"command": "dvc repro"}}
    for pipeline in PIPELINES:
        stages = yaml.safe_load((root / pipeline).read_text())["stages"]
        for name, stage in stages.items():
            body = stage.get("do", stage)
            command = " ".join(str(body["cmd"]).split())
            parameters: dict = {}
            if "foreach" in stage:  # over seeds (an int) or model names (the list's first is the default)
                items = _lookup(params, stage["foreach"].strip("${} "))
                name_of = "seed" if all(isinstance(i, int) for i in items) else "model"
                parameters[name_of] = {"type": "int", "default": 0} if name_of == "seed" else \
                    {"type": "string", "default": str(items[0])}
                command = command.replace("${item}", "{" + name_of + "}")
            for dotted in re.findall(r"\$\{([\w.]+)\}", command):
                key = dotted.replace(".", "_")
                parameters[key] = {"type": "string", "default": str(_lookup(params, dotted))}
                command = command.replace("${" + dotted + "}", "{" + key + "}")
            points[name] = {**({"parameters": parameters} if parameters else {}), "command": command}
    return points


def render(root: Path = ROOT) -> str:
    body = {"name": "reasoning-interp-lab", "python_env": "python_env.yaml", "entry_points": entry_points(root)}
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=200)


if __name__ == "__main__":
    (ROOT / "MLproject").write_text(render())
    print("wrote MLproject", file=sys.stderr)
