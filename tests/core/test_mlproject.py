"""MLproject is generated from dvc.yaml: the committed file is current, and each entry point runs
its stage's command with the paths written in dvc.yaml."""
import yaml

from modules.core.mlproject import entry_points, render
from modules.core.params import ROOT


def test_committed_mlproject_is_generated_from_the_pipelines():
    assert (ROOT / "MLproject").read_text() == render(), "run `make mlproject` after changing dvc.yaml"


def test_every_stage_is_an_entry_point_with_its_dvc_command():
    points = entry_points()
    from modules.core.mlproject import PIPELINES

    stages = {name: stage for pipeline in PIPELINES
              for name, stage in yaml.safe_load((ROOT / pipeline).read_text())["stages"].items()}
    assert set(points) == {"main", *stages} and "heads_ontology" in points
    train = points["train_logic"]
    assert train["parameters"] == {"seed": {"type": "int", "default": 0}}
    assert train["command"] == ("python -m pipelines.logic.train --seed {seed} --data artifacts/logic/data "
                                "--out artifacts/logic")
    assert points["report_logic"]["parameters"]["logic_report_dir"]["default"] == "reports/logic"
    assert "{logic_report_dir}" in points["report_logic"]["command"]
