import json

import pytest

from benchmarks import bench_llm_study
from modules.analysis.logic_llm import HEAD_SITES
from modules.data.logic.dataset import generate_flip_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_study_cost_is_measured_per_phase_and_projected(tmp_path):
    out = tmp_path / "study.json"
    bench_llm_study.main(["--shape", "tiny-llama", "--device", "cpu", "--dtype", "float32", "--pairs", "2",
                          "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["n_layers"] == 2 and record["n_heads"] == 4 and record["examples"] == 4
    assert set(record["phases_s"]) == {"decoding", "attention_statistics", "mean_ablations",
                                       *(f"head_patching_{site}" for site in HEAD_SITES)}
    assert all(seconds >= 0 for seconds in record["phases_s"].values())
    # every phase scales with the examples: the default 300 pairs are 600 examples, 150x these 4
    # (total_s is rounded to 0.1 s, 7.5 s once projected)
    assert record["projected_full_study_s"] == pytest.approx(150 * record["total_s"], abs=8)
    assert record["prompt_tokens"] > 100 and record["peak_gpu_memory_gib"] is None


def test_prompt_tokenizer_gives_every_word_and_mark_its_own_token():
    pairs = generate_flip_pairs(0, 3, depth=2, k=1)
    tokenizer = bench_llm_study.prompt_tokenizer(pairs)
    unknown = tokenizer.convert_tokens_to_ids("<eos>")
    for text in pairs.nl_prompt_logop:
        ids = tokenizer(text)["input_ids"]
        assert unknown not in ids
        assert "".join(tokenizer.decode(ids).split()) == "".join(text.split())
    assert tokenizer("Rules: A or B implies C.")["input_ids"][1] == tokenizer.convert_tokens_to_ids(":")
