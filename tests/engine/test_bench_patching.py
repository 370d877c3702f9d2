import json

import pytest

from benchmarks import bench_patching

pytestmark = pytest.mark.usefixtures("one_thread")


def test_benchmark_runs_every_tool_and_they_agree(tmp_path):
    out = tmp_path / "bench.json"
    code = bench_patching.main(["--shapes", "tiny-gpt2,tiny-llama", "--repeats", "1", "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    for shape in results:
        for sweep, entry in shape["sweeps"].items():
            assert set(entry["tools"]) == set(bench_patching.TOOLS)
            assert entry["agree"] and entry["cells"] == (16 if sweep == "resid" else 8)
            assert all(t["max_abs_diff"] <= 1e-5 for t in entry["tools"].values())
            assert 0 < entry["floor_fraction"] < 1 and entry["engine_vs_floor"] > 0


def test_floor_fraction_matches_the_issue_definition():
    # GPT-2-small shape: sum over cells of (layers from l up) x (positions from p on) ~ 28% of naive
    assert bench_patching.floor_fraction("resid", 12, 32) == pytest.approx(78 * 528 / 384 ** 2)
    assert round(bench_patching.floor_fraction("resid", 12, 32), 2) == 0.28
    assert bench_patching.floor_fraction("head", 3, 64) == pytest.approx(6 / 9)


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench_patching.main(["--shapes", "gpt5"])
    with pytest.raises(SystemExit):
        bench_patching.main(["--tools", "naive"])
