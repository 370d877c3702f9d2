"""The routing recipes (`make routing`, `make depth3`) end to end: the Makefile's own overrides, as DVC
experiments of the tiny pipeline. Prompts stop at the query variable, trace sequences or the
conclusion-source head join the training, and every later stage reads the data that way."""
import json
import re
import shlex

import mlflow
import pandas as pd

from safetensors.torch import load_file

from modules.data.logic import parse_compact_prompt, read_traces, trace_compact
from modules.engine.activation_cache import ActivationCache
from tests.pipeline.conftest import ROOT, make_project, run

TINY = {"logic.data.traces.size": "150", "logic.train.max_steps": "8", "logic.train.val_every": "4",
        "logic.seeds": "[0]"}


def makefile_overrides(variable: str, **tiny: str) -> list[str]:
    """The `-S key=value` pairs of one of the Makefile's recipes, with tiny sizes."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    flags = shlex.split(re.search(rf"^{variable} := (.*)$", text, re.M).group(1))
    pairs = dict(flag.split("=", 1) for flag in flags if flag != "-S")
    assert pairs["logic.data.prompt_end"] == "query"
    return [arg for key, value in {**pairs, **tiny}.items() for arg in ("-S", f"{key}={value}")]


def routing_overrides() -> list[str]:
    return makefile_overrides("ROUTING_PARAMS", **TINY)


def test_routing_experiment_trains_on_traces_and_ends_prompts_at_the_query(tmp_path):
    project, env = make_project(tmp_path)
    result = run(["dvc", "exp", "run", "-n", "routing-tiny", *routing_overrides()], project, env, timeout=900)
    assert "Running stage 'report_logic'" in result.stdout
    data = project / "artifacts/logic/data"
    test = pd.read_parquet(data / "test.parquet")
    assert (test.depth == 2).all() and test.prompt.str.match(r".* query [A-Z]$").all()
    traces = read_traces(data / "traces.parquet")
    assert len(traces) == 150 and (traces.depth == 5).all()
    assert [trace_compact(p) for p in traces.prompt] == traces.answer.tolist()
    assert not set(traces.prompt) & set(test.prompt)
    validation = json.loads((project / "artifacts/logic/validation.json").read_text())
    assert validation["success"] and validation["splits"]["traces"]["rows"] == 150
    assert validation["splits"]["benchmark"]["success"]  # the frozen depth-3 set keeps its own params
    pairs = pd.read_parquet(project / "artifacts/logic/pairs/pairs.parquet")
    assert pairs.prompt_logop.str.match(r".* query [A-Z]$").all() and (pairs.depth == 2).all()
    cache = ActivationCache(project / "artifacts/logic/activations/seed0")
    assert cache.metadata["extra"]["positions"] == [-2, -1] and cache["resid_post.1"].shape[1] == 2
    summary = json.loads((project / "artifacts/logic/analysis/seed0/summary.json").read_text())
    assert summary["probes"]["n"] == 50
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    train = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-seed0'")[0]
    assert any("traces.parquet" in key for key in train.data.params), sorted(train.data.params)
    evaluate = client.search_runs([experiment.experiment_id], "attributes.run_name = 'evaluate-seed0'")[0]
    assert evaluate.data.params["prompt_end"] == "query"
    report = (project / "reports/logic_routing/README.md").read_text()
    assert "400 depth-2 problems whose prompts end at the query variable" in report
    assert "150 depth-5 trace sequences" in report and train.info.run_id != summary["mlflow_run_id"]
    assert summary["mlflow_run_id"] in report
    assert report.count("not applicable: the last position is the query") == 2  # the two attention rows


def test_depth3_experiment_writes_rules_in_proof_order_and_trains_the_source_head(tmp_path):
    project, env = make_project(tmp_path)
    overrides = makefile_overrides("DEPTH3_PARAMS", **{"logic.data.sizes.train": "400", **TINY,
                                                       "logic.data.traces.size": "0",  # none in this recipe
                                                       "logic.train.max_steps": "50",  # one logged step
                                                       "logic.train.val_every": "25"})
    result = run(["dvc", "exp", "run", "-n", "depth3-tiny", *overrides], project, env, timeout=900)
    assert "Running stage 'report_logic'" in result.stdout
    data = project / "artifacts/logic/data"
    test = pd.read_parquet(data / "test.parquet")
    pairs = pd.read_parquet(project / "artifacts/logic/pairs/pairs.parquet")
    for prompt in [*test.prompt, *pairs.prompt_logop]:
        rules = parse_compact_prompt(prompt).rules
        concluded_at = {rule.conclusion: i for i, rule in enumerate(rules)}
        assert all(concluded_at.get(p, -1) < i for i, rule in enumerate(rules) for p in rule.premises), prompt
    assert (test.depth == 3).all() and test.prompt.str.match(r".* query [A-Z]$").all()
    validation = json.loads((project / "artifacts/logic/validation.json").read_text())
    assert validation["success"] and validation["splits"]["benchmark"]["success"]  # the frozen set: shuffled
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    train = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-seed0'")[0]
    assert float(train.data.params["source_aux"]) == 1.0 and "train_source_loss" in train.data.metrics
    model_keys = set(load_file(project / "artifacts/logic/models/seed0/model.safetensors"))
    assert model_keys and not any("source_head" in key for key in model_keys)  # the head is dropped
    report = (project / "reports/logic_depth3/README.md").read_text()
    assert "400 depth-3 problems, each chain's rules written in proof order, whose prompts end at the query" in report
    assert report.count("adapted: layer-") == 1 and "attention_conclusion_linear.png" in report
