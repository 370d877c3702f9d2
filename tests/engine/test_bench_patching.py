import json

import pytest

from benchmarks import bench_patching

pytestmark = pytest.mark.usefixtures("one_thread")


def test_benchmark_runs_every_tool_and_they_agree(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    docs = tmp_path / "engine.md"
    docs.write_text(f"intro\n{bench_patching.BEGIN}\nold text\n{bench_patching.END}\noutro\n")
    monkeypatch.setattr(bench_patching, "DOCS", docs)
    code = bench_patching.main(["--shapes", "tiny-gpt2,tiny-llama", "--repeats", "1", "--out", str(out),
                                "--write-docs"])
    assert code == 0
    text = docs.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old text" not in text
    assert text.count("<!-- shape:tiny-gpt2 -->") == 1 and text.count("<!-- shape:tiny-llama -->") == 1
    assert "| this engine |" in text and "all agree: True" in text
    results = json.loads(out.read_text())["results"]
    for shape in results:
        for sweep, entry in shape["sweeps"].items():
            assert set(entry["tools"]) == set(bench_patching.TOOLS)
            assert entry["agree"] and entry["cells"] == (16 if sweep == "resid" else 8)
            assert all(t["max_abs_diff"] <= 1e-5 for t in entry["tools"].values())
            assert 0 < entry["floor_fraction"] < 1 and entry["engine_vs_floor"] > 0


def test_docs_blocks_are_replaced_per_shape(tmp_path, monkeypatch):
    docs = tmp_path / "engine.md"
    block = "<!-- shape:{0} -->\n{1}\n<!-- /shape:{0} -->\n"
    docs.write_text(f"{bench_patching.BEGIN}\n{block.format('logic-3l', 'a')}{block.format('tiny-gpt2', 'b')}"
                    f"{bench_patching.END}\n")
    monkeypatch.setattr(bench_patching, "DOCS", docs)
    bench_patching.write_docs({"gpt2-small": block.format("gpt2-small", "c"),
                               "tiny-gpt2": block.format("tiny-gpt2", "d")})
    body = docs.read_text()
    where = [body.index(f"\n{x}\n") for x in "acd"]  # SHAPES order: logic-3l, gpt2-small, tiny-gpt2
    assert where == sorted(where)
    assert "\nb\n" not in body


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


def test_recorded_run_goes_into_the_docs_unchanged(tmp_path, monkeypatch):
    out, docs = tmp_path / "bench.json", tmp_path / "engine.md"
    docs.write_text(f"{bench_patching.BEGIN}\n{bench_patching.END}\n")
    monkeypatch.setattr(bench_patching, "DOCS", docs)
    assert bench_patching.main(["--shapes", "tiny-gpt2", "--tools", "engine,naive", "--repeats", "1",
                                "--out", str(out)]) == 0
    assert docs.read_text() == f"{bench_patching.BEGIN}\n{bench_patching.END}\n"  # measuring alone writes no docs
    assert bench_patching.main(["--from-json", str(out)]) == 0
    recorded = json.loads(out.read_text())
    assert bench_patching.shape_markdown(recorded["results"][0], recorded["meta"]) in docs.read_text()
