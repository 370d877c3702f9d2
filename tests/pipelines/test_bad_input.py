"""Bad input to the stages, as a new user would give it: one clear line on stderr, exit 1, and no
output left behind that DVC would take as done."""
import json
import shutil
from types import SimpleNamespace

import pytest
import yaml

from tests.pipelines.conftest import make_project, run, stage_variants

DATA = ["--out", "artifacts/logic/data"]
TRAIN = ["--seed", "0", "--data", "artifacts/logic/data", "--out", "artifacts/logic"]


def one_line_error(proc, *expected: str) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def edit_params(project, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny project with its data and a seed-0 model (8 steps)."""
    project, env = make_project(tmp_path_factory.mktemp("bad-input"))
    run(["python", "-m", "pipelines.logic.generate", *DATA], project, env)
    run(["python", "-m", "pipelines.logic.train", *TRAIN], project, env)
    return project, env


def _broken_yaml(text: str) -> str:
    return text.replace("logic:\n", "logic:\n  bad: [1, 2\n", 1)


def _edited(edit):
    def apply(text: str) -> str:
        params = yaml.safe_load(text)
        edit(params)
        return yaml.safe_dump(params, sort_keys=False)
    return apply


BAD_DATA_PARAMS = [
    (_edited(lambda p: p["logic"]["data"].pop("operators")), "params.yaml logic.data: missing key(s) ['operators']"),
    (_edited(lambda p: p["logic"]["data"].update(sizez=1)), "params.yaml logic.data: unknown key(s) ['sizez']"),
    (_edited(lambda p: p["logic"].update(seeds=[-1])), "params.yaml logic.seeds must be a non-empty list of distinct ints >= 0"),
    (_broken_yaml, "params.yaml: invalid YAML at line"),
]


@pytest.fixture(scope="module")
def bad_data_results(tmp_path_factory):
    """The generate stage on each of BAD_DATA_PARAMS, in one process of a fresh copy."""
    project, env = make_project(tmp_path_factory.mktemp("bad-data"))
    original = (project / "params.yaml").read_text()
    return stage_variants(project, env, "pipelines.logic.generate", DATA, [change(original) for change, _ in BAD_DATA_PARAMS],
                          "artifacts/logic/data")


@pytest.mark.parametrize("case", range(len(BAD_DATA_PARAMS)), ids=["no-operators", "unknown-key", "bad-seed", "yaml-syntax"])
def test_bad_data_params_are_one_line(bad_data_results, case):
    result = bad_data_results[case]
    one_line_error(SimpleNamespace(**result), BAD_DATA_PARAMS[case][1])
    assert not result["out_exists"]


def test_dropped_recipe_keys_stop_training_instead_of_defaulting(trained):
    project, env = trained
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, lambda p: [p["logic"]["train"].pop(k) for k in ("source_aux", "stop_on_perfect")])
        proc = run(["python", "-m", "pipelines.logic.train", *TRAIN], project, env, check=False)
        one_line_error(proc, "logic.train: missing key(s) ['source_aux', 'stop_on_perfect']")
    finally:
        (project / "params.yaml").write_text(original)


def test_a_seed_outside_logic_seeds_is_one_line(trained):
    project, env = trained
    proc = run(["python", "-m", "pipelines.logic.train", "--seed", "-1", *TRAIN[2:]], project, env, check=False)
    one_line_error(proc, "--seed -1 is not in params.yaml logic.seeds [0]")


def test_a_gpu_accelerator_on_a_cpu_machine_is_one_line(trained):
    project, env = trained
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, lambda p: p["logic"]["train"].update(accelerator="gpu", max_steps=9))
        proc = run(["python", "-m", "pipelines.logic.train", *TRAIN], project, env, check=False)
    finally:
        (project / "params.yaml").write_text(original)
    one_line_error(proc, "train.accelerator is 'gpu' but this machine has no visible GPU")


def test_activation_positions_outside_the_prompt_are_one_line(trained):
    project, env = trained
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, lambda p: p["logic"]["activations"].update(positions=[-2, 99]))
        proc = run(["python", "-m", "pipelines.logic.cache_activations", *TRAIN], project, env, check=False)
    finally:
        (project / "params.yaml").write_text(original)
    one_line_error(proc, "logic.activations.positions [99] are outside the")
    assert not (project / "artifacts/logic/activations/seed0").exists()


def test_an_empty_test_split_is_one_line(trained, tmp_path):
    project, env = trained
    import pandas as pd

    empty = tmp_path / "data"
    shutil.copytree(project / "artifacts/logic/data", empty)
    pd.read_parquet(empty / "test.parquet").head(0).to_parquet(empty / "test.parquet", index=False)
    metrics = project / "artifacts/logic/metrics/seed0.json"  # committed (cache: false): left as it was
    before = metrics.read_bytes() if metrics.exists() else None
    proc = run(["python", "-m", "pipelines.logic.evaluate", "--seed", "0", "--data", str(empty), "--benchmark",
                "data/logic_benchmark.parquet", "--out", "artifacts/logic"], project, env, check=False)
    one_line_error(proc, "the test split at", "has no rows")
    assert (metrics.read_bytes() if metrics.exists() else None) == before


def test_a_model_without_its_tokenizer_or_with_damaged_weights_is_one_line(trained, tmp_path):
    project, env = trained
    model = tmp_path / "model"
    shutil.copytree(project / "artifacts/logic/models/seed0", model)
    (model / "tokenizer.json").unlink()
    code = f"from modules.studies.logic.model import load_checkpoint; load_checkpoint({str(model)!r})"
    wrapped = ["python", "-c", "from modules.core.stage import run\nrun(lambda: exec(" + repr(code) + "))"]
    one_line_error(run(wrapped, project, env, check=False), "tokenizer.json is missing")
    shutil.copy2(project / "artifacts/logic/models/seed0/tokenizer.json", model / "tokenizer.json")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    one_line_error(run(wrapped, project, env, check=False), "model.safetensors is corrupted")


def test_a_corrupted_dataset_fails_its_checks_with_one_line(trained, tmp_path):
    """The validate stage on a split whose answers were overwritten: Great Expectations fails it and
    the stage says so in one line, exit 1 (DVC records nothing); the Data Docs and the summary stay
    for the user to read what failed."""
    project, env = trained
    import pandas as pd

    corrupted = tmp_path / "data"
    shutil.copytree(project / "artifacts/logic/data", corrupted)
    test = pd.read_parquet(corrupted / "test.parquet")
    test.assign(answer="not a proof").to_parquet(corrupted / "test.parquet", index=False)
    docs, summary = tmp_path / "docs", tmp_path / "validation.json"
    proc = run(["python", "-m", "pipelines.logic.validate", "--data", str(corrupted), "--benchmark",
                "data/logic_benchmark.parquet", "--docs", str(docs), "--summary", str(summary)], project, env,
               check=False)
    one_line_error(proc, "data validation failed: split 'test' expectation")
    assert json.loads(summary.read_text())["success"] is False and (docs / "index.html").is_file()
