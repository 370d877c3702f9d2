"""The Makefile's recipes other than the default (`make routing`, `make shuffled`) end to end: its own
overrides, as DVC experiments of the tiny pipeline. The routing recipe stops prompts at the query and
trains on trace sequences; the shuffled one is the task as the paper writes it, without the default
recipe's proof-order rules, query twins or source head; every later stage reads the data that way."""
import json
import re
import shlex

import mlflow
import pandas as pd
import yaml


from modules.studies.logic.data import read_traces, trace_compact
from modules.engine.activation_cache import ActivationCache
from modules.studies.logic.circuit_report import data_sentence
from tests.pipelines.conftest import ROOT, in_proof_order, make_project, run

TINY = {"logic.data.sizes.train": "400", "logic.data.traces.size": "150", "logic.train.max_steps": "8",
        "logic.train.val_every": "4", "logic.seeds": "[0]"}


def makefile_variable(name: str) -> str:
    """A Makefile variable's value, with the `$(OTHER)` variables it names expanded."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    value = re.search(rf"^{name} := (.*)$", text, re.M).group(1)
    return re.sub(r"\$\((\w+)\)", lambda m: makefile_variable(m.group(1)), value)


def makefile_overrides(variable: str, **tiny: str) -> list[str]:
    """The `-S key=value` pairs of one of the Makefile's recipes, with tiny sizes."""
    flags = shlex.split(makefile_variable(variable))
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    pairs = dict(flag.split("=", 1) for flag in flags[1::2])
    assert len(pairs) == len(flags) // 2, "a key set twice"  # dvc would apply only one of them
    return [arg for key, value in {**pairs, **tiny}.items() for arg in ("-S", f"{key}={value}")]


def routing_overrides() -> list[str]:
    return makefile_overrides("ROUTING_PARAMS", **TINY)


def test_routing_experiment_trains_on_traces_and_ends_prompts_at_the_query(tmp_path):
    project, env = make_project(tmp_path)
    result = run(["dvc", "exp", "run", "-n", "routing-tiny", *routing_overrides(), "report_logic"], project, env, timeout=900)
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


def test_shuffled_experiment_writes_the_task_as_the_paper_does(tmp_path):
    project, env = make_project(tmp_path)
    overrides = makefile_overrides("SHUFFLED_PARAMS", **{**TINY, "logic.data.traces.size": "0"})
    # up to the activations: the later stages read them as the routing experiment's do
    result = run(["dvc", "exp", "run", "-n", "shuffled-tiny", *overrides, "cache_logic_activations"], project, env,
                 timeout=900)
    assert "Running stage 'cache_logic_activations@0'" in result.stdout
    data = project / "artifacts/logic/data"
    train, test = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "test.parquet")
    assert test.prompt.str.match(r".* query [A-Z] answer$").all()
    stems = train.prompt.str.replace(r" query .*", "", regex=True).to_numpy()
    assert len(train) == 400 and not (stems[::2] == stems[1::2]).any()  # no query twins
    out_of_order = sum(not in_proof_order(prompt) for prompt in test.prompt)
    assert out_of_order > len(test) / 2  # one random order for all rules
    cache = ActivationCache(project / "artifacts/logic/activations/seed0")
    assert cache.metadata["extra"]["positions"] == [-3, -2, -1]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("propositional-logic")
    train_run = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-seed0'")[0]
    assert float(train_run.data.params["source_aux"]) == 0.0 and train_run.data.params["stop_on_perfect"] == "True"
    params = yaml.safe_load((project / "params.yaml").read_text())["logic"]
    assert "400 depth-3 problems whose prompts end with `query Q answer`" in data_sentence(params["data"])
    assert params["report"]["dir"] == "reports/logic_shuffled"


def test_paper_format_overrides_name_existing_keys_and_end_prompts_at_answer(tmp_path):
    """`make paper-format`: the default recipe (proof-ordered rules, query twins, the source head)
    with prompts ending `query W answer`; every key it sets exists (`-S` would add a new one)."""
    overrides = makefile_overrides("PAPER_PARAMS", **{**TINY, "logic.data.traces.size": "0"})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in overrides[1::2]:
        node = params
        for part in key.split("=", 1)[0].split("."):
            assert part in node, key
            node = node[part]
    project, env = make_project(tmp_path)
    run(["dvc", "exp", "run", "-n", "paper-tiny", *overrides, "generate_logic"], project, env, timeout=900)
    train = pd.read_parquet(project / "artifacts/logic/data/train.parquet")
    assert train.prompt.str.match(r".* query [A-Z] answer$").all()
    stems = train.prompt.str.replace(r" query .*", "", regex=True).to_numpy()
    assert (stems[::2] == stems[1::2]).all()  # query twins
    assert all(in_proof_order(prompt) for prompt in train.prompt)
