"""benchmarks/bench_backpatch.py at a tiny size: every method runs, they produce the same tokens, and
the medians and ratios are printed and written."""
import json

from tests.benchmarks.conftest import run_benchmark

TINY = ("--layers", "3", "--d-model", "32", "--vocab", "64", "--prompt-len", "8", "--new-tokens", "3",
        "--repeats", "1", "--warmup", "0", "--threads", "1")


def test_benchmark_runs_every_method_and_they_agree(tmp_path):
    out = tmp_path / "bench.json"
    result = run_benchmark("bench_backpatch", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| engine backpatch_grid |" in result.stdout and "all agree: True" in result.stdout
    record = json.loads(out.read_text())
    assert [entry["position"] for entry in record["results"]] == [4, 7]  # the middle and the last token
    for entry in record["results"]:
        assert entry["pairs"] == 3 and entry["agree"]  # 3 layers: (1, 0), (2, 0), (2, 1)
        assert list(entry["tools"]) == ["grid", "backpatch", "hf", "nnsight"]
        assert all(t["median_s"] > 0 and t["pairs_differing"] == 0 for t in entry["tools"].values())


def test_benchmark_rejects_bad_arguments():
    for args in (["--tools", "grid,vllm"], ["--positions", "99", *TINY], ["--layers", "1"], ["--repeats", "0"]):
        result = run_benchmark("bench_backpatch", *args)
        assert result.returncode == 2 and "error:" in result.stderr.splitlines()[-1], args
