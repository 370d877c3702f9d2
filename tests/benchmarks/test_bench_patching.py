"""benchmarks/bench_patching.py: every tool runs the same sweeps, they agree, and the tables land in
the docs section only when asked."""
import json

from tests.benchmarks.conftest import run_benchmark

BEGIN, END = "<!-- bench_patching:begin -->", "<!-- bench_patching:end -->"


def test_benchmark_runs_every_tool_and_they_agree(tmp_path):
    out, docs = tmp_path / "bench.json", tmp_path / "engine.md"
    docs.write_text(f"intro\n{BEGIN}\nold text\n{END}\noutro\n")
    result = run_benchmark("bench_patching", "--shapes", "tiny-gpt2,tiny-llama", "--repeats", "1", "--threads", "1",
                           "--out", str(out), "--write-docs", "--docs", str(docs))
    assert result.returncode == 0, result.stderr
    text = docs.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old text" not in text
    assert text.count("<!-- shape:tiny-gpt2 -->") == 1 and text.count("<!-- shape:tiny-llama -->") == 1
    assert "| this engine |" in text and "all agree: True" in text
    record = json.loads(out.read_text())
    tools = None
    for shape in record["results"]:
        for sweep, entry in shape["sweeps"].items():
            tools = tools or set(entry["tools"])
            assert set(entry["tools"]) == tools and {"engine", "naive"} <= tools
            assert entry["agree"] and entry["cells"] == (16 if sweep == "resid" else 8)
            assert all(t["max_abs_diff"] <= 1e-5 for t in entry["tools"].values())
            assert 0 < entry["floor_fraction"] < 1 and entry["engine_vs_floor"] > 0


def test_benchmark_rejects_bad_arguments():
    for args in (["--shapes", "gpt5"], ["--tools", "naive"]):
        result = run_benchmark("bench_patching", *args)
        assert result.returncode == 2 and "error:" in result.stderr.splitlines()[-1]


def test_recorded_run_goes_into_the_docs_unchanged(tmp_path):
    out, docs = tmp_path / "bench.json", tmp_path / "engine.md"
    docs.write_text(f"{BEGIN}\n{END}\n")
    measured = run_benchmark("bench_patching", "--shapes", "tiny-gpt2", "--tools", "engine,naive", "--repeats", "1",
                             "--threads", "1", "--out", str(out), "--docs", str(docs))
    assert measured.returncode == 0, measured.stderr
    assert docs.read_text() == f"{BEGIN}\n{END}\n"  # measuring alone writes no docs
    assert run_benchmark("bench_patching", "--from-json", str(out), "--docs", str(docs)).returncode == 0
    body = docs.read_text()
    assert body.count("<!-- shape:tiny-gpt2 -->") == 1 and "| this engine |" in body
    assert body.split("<!-- shape:tiny-gpt2 -->")[1].split("<!-- /shape:tiny-gpt2 -->")[0].strip() in measured.stdout
