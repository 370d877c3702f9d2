"""benchmarks/bench_llm_study.py: the LLM study's cost per phase on a random-weight shape, projected
to the full study."""
import json

import pytest

from modules.analysis.pairs import HEAD_SITES
from tests.benchmarks.conftest import run_benchmark


def test_study_cost_is_measured_per_phase_and_projected(tmp_path):
    out = tmp_path / "study.json"
    result = run_benchmark("bench_llm_study", "--shape", "tiny-llama", "--device", "cpu", "--dtype", "float32",
                           "--pairs", "2", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["n_layers"] == 2 and record["n_heads"] == 4 and record["examples"] == 4
    assert set(record["phases_s"]) == {"decoding", "attention_statistics", "mean_ablations",
                                       *(f"head_patching_{site}" for site in HEAD_SITES)}
    assert all(seconds >= 0 for seconds in record["phases_s"].values())
    # every phase scales with the examples: the default 300 pairs are 600 examples, 150x these 4
    # (total_s is rounded to 0.1 s, 7.5 s once projected)
    assert record["projected_full_study_s"] == pytest.approx(150 * record["total_s"], abs=8)
    assert record["prompt_tokens"] > 100 and record["peak_gpu_memory_gib"] is None
