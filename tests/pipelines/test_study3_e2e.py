"""Study 3's pipeline end to end on CPU-tiny params in its own project copy: `dvc repro` of
pipelines/hopping/dvc.yaml runs the main pipeline's data, checks and model import it needs, then the
study on the from-scratch graph model and the real SmolLM2 (its own file, so that a test worker runs
it beside the main pipeline's)."""
import json

import mlflow
import pandas as pd
import pytest

from tests.pipelines.conftest import ran_or_restored, repro_in_copy, run

LM = "smollm2-135m"
PIPELINE = "pipelines/hopping/dvc.yaml"


@pytest.fixture(scope="module")
def hopping_project(tmp_path_factory):
    return repro_in_copy(tmp_path_factory, "hopping", PIPELINE, timeout=1800, share_cache=True)


def test_study3_runs_on_the_graph_model_and_the_real_smollm2(hopping_project):
    """Data, GX checks, import, tuning and training the from-scratch model, E0, E5 and E1-E4 on it and
    on SmolLM2, the report; each an MLflow run of the study's experiment."""
    project, env, study = hopping_project
    for stage in ("generate_hopping", "validate_hopping"):
        assert f"Running stage '{stage}'" in study.stdout
    assert ran_or_restored(f"import_lm@{LM}", study.stdout)
    assert (project / "reports/data_docs/hopping/graph/index.html").is_file()
    assert (project / "reports/data_docs/hopping/world/index.html").is_file()
    for stage in ("tune_hopping", "train_hopping", "evaluate_hopping_graph", "backpatch_hopping_graph",
                  "layers_hopping_graph", f"evaluate_hopping@{LM}", f"backpatch_hopping@{LM}", f"layers_hopping@{LM}",
                  "report_hopping"):
        assert f"Running stage '{PIPELINE}:{stage}'" in study.stdout
    model = project / "artifacts/hopping/graph/model"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    evaluated = json.loads((project / f"artifacts/hopping/{LM}/evaluate/evaluate.json").read_text())
    assert evaluated["all"]["first_hop"]["n"] == 40 and evaluated["queries"] == 40
    generations = pd.read_csv(project / f"artifacts/hopping/{LM}/backpatch/generations.csv")
    assert set(generations["position"]) <= {"t2"} and set(generations["kind"]) <= {"back", "identity", "forward",
                                                                                    "mismatched"}
    identity = generations[generations["kind"] == "identity"]
    assert identity["same_as_baseline"].all()      # ℓs = ℓt reproduces the unpatched generation
    back = generations[generations["kind"] == "back"]
    assert (back["source_layer"] > back["target_layer"]).all()
    report = (project / "reports/hopping/README.md").read_text()
    assert f"## {LM}" in report and "## graph" in report and "| claim | paper | ours | verdict |" in report
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("hopping-too-late").experiment_id])
    assert {"generate", "validate", "tune", "train", f"evaluate-{LM}", f"backpatch-{LM}", f"layers-{LM}",
            "evaluate-graph"} <= {r.info.run_name for r in runs}
    assert "Running stage" not in run(["dvc", "repro", PIPELINE], project, env).stdout
