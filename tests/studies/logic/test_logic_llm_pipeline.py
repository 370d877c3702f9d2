"""The GPU pipeline (pipelines/llm/dvc.yaml) end to end through dvc and MLflow, on a tiny planted
Mistral saved with save_pretrained in a copy of the project and named in its registry (lms) as a
local-path model, as a 7B model is on a GPU host."""
import json
import sqlite3

import pandas as pd
import pytest
import yaml

from tests.studies.logic.planted import PLANTED_HEAD, PLANTED_LAYER, nl_tokenizer, planted_mistral
from tests.pipelines.conftest import make_project, run

LLM_PIPELINE = "pipelines/llm/dvc.yaml"
STUDY1_REPORT = f"{LLM_PIPELINE}:logic_llm_gpu_report"   # the pipeline's study-1 stages (2 and 3 have their own)
QUERY_OFFSET = 3  # the query variable, then ".", "Answer", ":" under the test tokenizer


@pytest.fixture(scope="module")
def llm_project(tmp_path_factory):
    project, env = make_project(tmp_path_factory.mktemp("llm"))
    model_dir = project / "models" / "tiny-mistral"
    planted_mistral(QUERY_OFFSET).save_pretrained(model_dir)
    nl_tokenizer().save_pretrained(model_dir)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["lms"]["tiny-mistral"] = {"source": "path", "path": str(model_dir), "dtype": "float32"}
    params["logic_llm_gpu"]["model"] = "tiny-mistral"
    params["logic_llm_gpu"]["prompts"].update(n_pairs=8, shots=1)
    params["logic_llm_gpu"]["study"].update(examples="all", n_boot=100, random_controls=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro", STUDY1_REPORT], project, env, timeout=900)
    return project, env, result


def test_default_repro_never_touches_the_llm_pipeline(llm_project):
    project, env, _ = llm_project
    default = run(["dvc", "stage", "list"], project, env).stdout  # the stages a bare `dvc repro` runs
    assert "generate_logic" in default and "logic_llm_gpu" not in default
    assert "logic_llm_gpu_study" in run(["dvc", "stage", "list", LLM_PIPELINE], project, env).stdout


def test_llm_pipeline_writes_validated_prompts_study_and_report(llm_project):
    project, env, result = llm_project
    pairs = pd.read_parquet(project / "artifacts/logic_llm_gpu/prompts/pairs.parquet")
    assert len(pairs) == 8 and (pairs.depth == 2).all()
    assert (project / "reports/data_docs/logic_llm_gpu/index.html").is_file()
    assert json.loads((project / "artifacts/logic_llm_gpu/prompts/validation.json").read_text())["success"]
    summary = json.loads((project / "artifacts/logic_llm_gpu/study/summary.json").read_text())
    assert summary["n_examples"] == 16 and summary["n_analysed"] == 16
    assert [(c["layer"], c["head"], c["family"]) for c in summary["circuit"]] == [
        (PLANTED_LAYER, PLANTED_HEAD, "mover")]
    metrics = json.loads((project / "artifacts/logic_llm_gpu/metrics.json").read_text())
    assert metrics["circuit_heads"] == 1.0 and "sufficiency" in metrics
    report = (project / "reports/logic_llm/README.md").read_text()
    assert summary["mlflow_run_id"] in report
    assert f"| mover | ({PLANTED_LAYER},{PLANTED_HEAD}) |" in report
    assert "no head (12,9) in this model (2 layers x 4 heads)" in report
    for site in ("head_out", "q", "k", "v"):
        assert (project / f"reports/logic_llm/figures/patching_{site}.png").stat().st_size > 1000
    shown = run(["dvc", "metrics", "show"], project, env).stdout
    assert "artifacts/logic_llm_gpu/metrics.json" in shown and "first_token_accuracy" in shown
    assert "up to date" in run(["dvc", "status", STUDY1_REPORT], project, env).stdout


def test_llm_runs_are_in_mlflow_with_nested_patching_runs(llm_project):
    project, _, _ = llm_project
    with sqlite3.connect(project / "mlflow.db") as db:
        names = [r[0] for r in db.execute("select name from runs where status = 'FINISHED'")]
        parent = db.execute("select run_uuid from runs where name = 'llm-study-tiny-mistral-base'").fetchone()[0]
        nested = [r[0] for r in db.execute(
            "select name from runs join tags on runs.run_uuid = tags.run_uuid "
            "where tags.key = 'mlflow.parentRunId' and tags.value = ?", (parent,))]
    assert "llm-gpu-prompts" in names and "llm-study-tiny-mistral-base" in names
    assert sorted(nested) == [f"patching {site}" for site in ("head_out", "k", "q", "v")]  # one a site


def _study(project, env, tmp_path, model: str):
    return run(["python", "-m", "pipelines.logic.llm_study", "--section", "logic_llm_gpu", "--model", model,
                "--label", "base", "--prompts", "artifacts/logic_llm_gpu/prompts/pairs.parquet",
                "--out", str(tmp_path / "study"), "--metrics", str(tmp_path / "metrics.json")], project, env, check=False)


def test_missing_model_is_one_line_naming_the_path(llm_project, tmp_path):
    project, env, _ = llm_project
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    missing = project / "models" / "no-such-model"
    params["lms"]["tiny-mistral"]["path"] = str(missing)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = _study(project, env, tmp_path, "tiny-mistral")
    finally:
        (project / "params.yaml").write_text(original)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: model 'tiny-mistral': no directory at {missing}"]
    assert not (tmp_path / "study").exists() and not (tmp_path / "metrics.json").exists()
