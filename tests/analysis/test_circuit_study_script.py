"""benchmarks/circuit_study.py: the pipeline's circuit study on a saved recipe-search model, with
its prompts shaped as that model was trained."""
import json

from benchmarks import circuit_study
from modules.models.logic_model import build_logic_model, save_checkpoint
from modules.models.logic_tokenizer import build_logic_tokenizer


def test_saved_model_is_studied_on_prompts_ending_at_the_query(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "study"
    save_checkpoint(build_logic_model(n_embd=24, seed=0), build_logic_tokenizer(), model_dir)
    circuit_study.main(["--model", str(model_dir), "--depth", "2", "--end-at-query", "--train-size", "500",
                        "--n-test", "60", "--n-pairs", "8", "--threads", "1", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "model" and summary["n_layers"] == 3
    assert summary["probes"]["n"] == 60 and summary["flip_pairs"]["n_examples"] == 16
    probes = (out / "probes.csv").read_text()  # positions: `query` and the query variable, no `answer`
    assert "query_keyword" in probes and ",query," in probes and "answer" not in probes
    assert not list(tmp_path.glob(".study.tmp-*"))  # written atomically
