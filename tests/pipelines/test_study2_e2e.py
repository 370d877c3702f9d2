"""Study 2's pipeline end to end on CPU-tiny params in its own project copy: `dvc repro` of
pipelines/ontology/dvc.yaml runs the main pipeline's data, checks and model import it needs, then the
study on the real SmolLM2 (its own file, so that a test worker runs it beside the main pipeline's)."""
import json

import mlflow
import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.pipelines.conftest import ran_or_restored, repro_in_copy, run

LM = "smollm2-135m"
PIPELINE = "pipelines/ontology/dvc.yaml"


@pytest.fixture(scope="module")
def ontology_project(tmp_path_factory):
    return repro_in_copy(tmp_path_factory, "ontology", PIPELINE, timeout=1200, share_cache=True)


def test_study2_runs_on_the_real_smollm2(ontology_project):
    """Data, GX checks, import, behaviour, the head analyses of one subtask, the report; each an
    MLflow run of the study's experiment."""
    project, env, study = ontology_project
    for stage in ("generate_ontology", "validate_ontology", "generate_ontology_probes", "validate_ontology_probes"):
        assert f"Running stage '{stage}'" in study.stdout
    assert ran_or_restored(f"import_lm@{LM}", study.stdout)
    for stage in (f"behaviour_ontology@{LM}", f"heads_ontology@{LM}", f"probes_ontology@{LM}", f"onehop_ontology@{LM}",
                  "report_ontology"):
        assert f"Running stage '{PIPELINE}:{stage}'" in study.stdout
    assert (project / "reports/data_docs/ontology/index.html").is_file()
    items = pd.read_parquet(project / "artifacts/ontology/data/items.parquet")
    assert len(items) == 12 and items["label"].mean() == 0.5
    for stage in (f"behaviour_ontology@{LM}", f"heads_ontology@{LM}", "report_ontology"):
        assert f"Running stage 'pipelines/ontology/dvc.yaml:{stage}'" in study.stdout
    behaviour = json.loads((project / f"artifacts/ontology/{LM}/behaviour/behaviour.json").read_text())
    assert behaviour["n_items"] == 6 and set(behaviour["subtasks"]) == {str(s) for s in range(10)}
    heads = json.loads((project / f"artifacts/ontology/{LM}/heads/summary.json").read_text())
    assert heads["n_layers"] == 30 and heads["n_heads"] == 9 and set(heads["subtasks"]) == {"8"}
    analysed = [e for e in heads["subtasks"].values() if e["n_patch"]]
    assert analysed, "no subtask had a correctly predicted example"
    for entry in analysed:
        assert -1.5 <= entry["top_patching"][0]["score"] <= 1.5 and entry["sufficiency"]["curve"][-1]["agreement"] == 1.0
    tensors = load_file(project / f"artifacts/ontology/{LM}/heads/tensors.safetensors")
    assert tensors["trace_context_share"].shape == (30,)
    probes = json.loads((project / f"artifacts/ontology/{LM}/probes/summary.json").read_text())
    assert probes["n_layers"] == 30 and probes["n_pairs"]["test"] == 3 * 4 * 6
    table = pd.read_csv(project / f"artifacts/ontology/{LM}/probes/probes.csv")
    assert len(table) == 2 * 2 * 31 and table.macro_f1.between(0, 1).all()
    onehop = json.loads((project / f"artifacts/ontology/{LM}/onehop/summary.json").read_text())
    assert set(onehop["corruptions"]) == {"class", "rule", "property"} and onehop["n_heads"] == 9
    assert all(e["n"] <= 1 for e in onehop["corruptions"].values())
    report = (project / "reports/ontology/README.md").read_text()
    assert "### The one-hop task's heads" in report
    assert f"## {LM}" in report and "| claim | paper (Llama-2-7B) | ours | verdict |" in report
    assert "### Token-mixing probes" in report and (project / f"reports/ontology/figures/{LM}-probes/probes.png").is_file()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ontology-cot").experiment_id])
    assert {"generate", "validate", f"behaviour-{LM}", f"heads-{LM}", "generate-probes", "validate-probes",
            f"probes-{LM}", f"onehop-{LM}"} <= {r.info.run_name for r in runs}
    assert "Running stage" not in run(["dvc", "repro", PIPELINE], project, env).stdout
