"""The 7B entries of studies 2 and 3 (``ontology.gpu.models``, ``hopping.gpu.models``: the stages in
pipelines/llm/dvc.yaml) load their models by path, as on a GPU host. No 7B model is here, so the imported
SmolLM2 directory is registered under another name as a path model and run through each study's model
stages (E1-E4, which load it the same way, left out for time) and its 7B report at a tiny size."""
from pathlib import Path

import pytest
import yaml

from modules.core.params import ParamsError, load
from modules.studies.hopping import stages
from modules.studies.hopping.params import HoppingParams, check_model_listed
from modules.studies.ontology import stages as ontology_stages
from modules.studies.ontology.params import OntologyParams

REPO = Path(__file__).resolve().parents[2]
NAME = "smollm2-by-path"


@pytest.fixture
def gpu_project(lm_dirs, tmp_path, monkeypatch):
    """A working directory whose params.yaml lists the path model in lms and hopping.gpu.models."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["lms"][NAME] = {"source": "path", "path": str(lm_dirs["smollm2-135m"]), "dtype": "float32",
                           "licence": "Apache-2.0"}
    hopping = params["hopping"]
    hopping["gpu"]["models"] = [NAME]
    hopping["evaluate"] |= {"max_queries": 16}
    hopping["backpatch"] |= {"incorrect_items": 1, "correct_items": 1, "positions": ["t2"],
                             "pairs": [[20, 10], [25, 5]], "controls": ["identity"], "n_boot": 50}
    ontology = params["ontology"]
    ontology["gpu"]["models"] = [NAME]
    ontology["data"] |= {"items": 8, "false_items": 4, "onehop": 2}
    ontology["behaviour"] |= {"items": 4, "shots": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path, load(HoppingParams, hopping, "hopping"), load(OntologyParams, ontology, "ontology")


def test_a_gpu_model_runs_by_path_through_every_study3_stage_into_its_own_report(gpu_project):
    root, params, _ = gpu_project
    assert NAME not in params.models
    out = root / "artifacts/hopping_gpu" / NAME
    data = root / "artifacts/hopping/data"   # read by the from-scratch model only
    evaluated = stages.evaluate(params, NAME, data, None, out / "evaluate")
    assert evaluated["queries"] == 16 and evaluated["all"]["subsets"]["incorrect"] >= 1
    patched = stages.backpatch(params, NAME, data, None, out / "evaluate", out / "backpatch", out / "backpatch.json")
    assert patched["n_layers"] == 30 and (out / "backpatch.json").is_file()
    report = stages.report(params, root / "artifacts/hopping_gpu", None, root / "reports/hopping_gpu", gpu=True)
    text = report.read_text()
    assert text.startswith("# Study 3: hopping too late (Biran et al. 2024), 7B models")
    assert f"## {NAME} (curated real-world set)" in text and "## graph" not in text
    assert "`hopping_gpu_report` stage of `pipelines/llm/dvc.yaml`" in text


def test_a_gpu_model_runs_by_path_through_study2s_behaviour_into_its_own_report(gpu_project):
    root, _, params = gpu_project
    data, out = root / "artifacts/ontology/data", root / "artifacts/ontology_gpu" / NAME
    ontology_stages.generate_data(params, data)
    summary = ontology_stages.run_behaviour(params, NAME, None, data, out / "behaviour")
    assert summary["n_items"] == 4 and summary["model"] == NAME
    text = ontology_stages.report(params, root / "artifacts/ontology_gpu", root / "reports/ontology_gpu",
                                  gpu=True).read_text()
    assert text.startswith("# Study 2: chain of thought over fictional ontologies (Dutta et al. 2024), 7B models")
    assert f"## {NAME}" in text and "## smollm2-135m" not in text


def test_a_model_in_neither_list_is_one_line(gpu_project):
    _, params, _ = gpu_project
    with pytest.raises(ParamsError, match=r"^--model llama3-70b is not in params.yaml hopping.models "
                                          r"\['smollm2-135m'\] or hopping.gpu.models \['smollm2-by-path'\]$"):
        check_model_listed(params, "llama3-70b")
