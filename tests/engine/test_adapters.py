import json

import pytest
import torch
from transformers import BertConfig, BertModel

from modules.engine import tiny
from modules.engine.adapters import EngineError, ModelLoadError, get_adapter, load_model
from modules.engine.hooks import SITE_KINDS, capture
from modules.engine.runner import Runner
from tests.conftest import ARCHS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_convention_matches_output_hidden_states(tiny_model, arch):
    model, _ = tiny_model(arch)
    n = get_adapter(model).n_layers
    ids = random_ids(2, 8)
    sites = [f"resid_pre.{l}" for l in range(n)] + [f"resid_post.{l}" for l in range(n)]
    with capture(model, sites) as acts:
        out = model(ids, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == n + 1
    for layer in range(n):
        assert torch.equal(acts[f"resid_pre.{layer}"], hidden[layer])
    for layer in range(n - 1):
        assert torch.equal(acts[f"resid_post.{layer}"], hidden[layer + 1])
    # the last entry of hidden_states is the final norm of the last block's raw output
    assert not torch.allclose(acts[f"resid_post.{n - 1}"], hidden[n])
    assert torch.equal(get_adapter(model).final_norm(acts[f"resid_post.{n - 1}"]), hidden[n])


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_return_tensors_and_sites_have_documented_shapes(tiny_model, arch):
    model, _ = tiny_model(arch)
    adapter = get_adapter(model)
    ids = random_ids(2, 8)
    out = adapter.blocks[0](adapter.embed(ids, torch.arange(8)[None]),
                            **_layer_kwargs(adapter, model, ids))
    assert isinstance(out, torch.Tensor)  # transformers 5: a tensor, not a tuple
    with capture(model, [f"{kind}.1" for kind in SITE_KINDS]) as acts:
        model(ids)
    d, h, kv, dh = adapter.d_model, adapter.n_heads, adapter.n_kv_heads, adapter.head_dim
    expected = {"resid_pre": (2, 8, d), "resid_post": (2, 8, d), "attn_out": (2, 8, d), "mlp_out": (2, 8, d),
                "head_out": (2, 8, h, dh), "q": (2, 8, h, dh), "k": (2, 8, kv, dh), "v": (2, 8, kv, dh),
                "pattern": (2, h, 8, 8)}
    assert {k.split(".")[0]: tuple(v.shape) for k, v in acts.items()} == expected
    torch.testing.assert_close(acts["pattern.1"].sum(-1), torch.ones(2, h, 8))
    assert (arch == "gpt2") == (kv == h)  # the Llama-family models use GQA here
    # the residual stream adds up inside a block
    torch.testing.assert_close(acts["resid_pre.1"] + acts["attn_out.1"] + acts["mlp_out.1"], acts["resid_post.1"])


def _layer_kwargs(adapter, model, ids):
    runner = Runner(model, ids)
    hidden = adapter.embed(ids, runner.position_ids)
    kwargs = dict(attention_mask=runner._mask(0, 0, None, hidden), position_ids=runner.position_ids)
    if adapter.spec.rotary:
        kwargs["position_embeddings"] = adapter.position_embeddings(hidden, runner.position_ids)
    return kwargs


@pytest.mark.parametrize("arch,kwargs", [("gpt2", {}), ("llama", {}), ("mistral", {"sliding_window": 3}),
                                         ("qwen2", {"sliding_window": 3}), ("gemma2", {"sliding_window": 3}),
                                         ("llama", {"attn_implementation": "sdpa"})])
def test_runner_reproduces_the_model_forward(arch, kwargs):
    model = tiny.tiny_model(arch, n_layers=2, init_std=0.1, **kwargs)
    ids = random_ids(2, 9, seed=3)
    padding = torch.ones_like(ids)
    padding[0, :3] = 0  # left padding in the first prompt
    for mask in (None, padding):
        expected = model(ids, attention_mask=mask, output_hidden_states=True)
        runner = Runner(model, ids, mask)
        resid = runner.record()
        keep = slice(None) if mask is None else mask.bool()
        torch.testing.assert_close(runner.adapter.logits(resid[-1])[keep], expected.logits[keep],
                                   atol=1e-5, rtol=1e-5)
        # restarting at layer 1 for positions 4.. reuses the recorded keys/values of 0..3
        restarted = runner.layer(1, resid[1][:, 4:], 4, torch.arange(2))
        torch.testing.assert_close(restarted, resid[2][:, 4:], atol=1e-5, rtol=1e-5)
        # the last block for positions 6.. only, keys/values of 4..5 computed from its input
        last = runner.last_layer_at(resid[1][:, 4:], 4, 6, torch.arange(2))
        torch.testing.assert_close(last, resid[2][:, 6:], atol=1e-5, rtol=1e-5)


def test_load_model_reads_a_saved_checkpoint(tiny_model):
    model, tokenizer = tiny_model("llama")
    assert not model.training and model.config._attn_implementation == "eager"
    assert tokenizer("w1 w2 w3")["input_ids"] == [1, 2, 3]


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_model(tmp_path)
    tiny.tiny_config("gpt2").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no weights at .*safetensors"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="no model at .*absent-model: directory not found"):
        load_model(tmp_path / "absent-model")
    with pytest.raises(ModelLoadError, match="cannot load config for no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")  # a hub id: offline here, still one line
    bert = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(bert)
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(EngineError, match="unknown architecture 'bert'"):
        load_model(bert)
    with pytest.raises(EngineError, match="dtype"):
        load_model(tmp_path, dtype="float99")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2"


def test_get_adapter_rejects_unknown_architectures_and_out_of_range_indices(tiny_model):
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(EngineError, match="unknown architecture 'bert'; supported: gemma2, gpt2, llama"):
        get_adapter(bert)
    adapter = get_adapter(tiny_model("llama")[0])
    with pytest.raises(EngineError, match=r"layer 3 out of range for a 3-layer model \(allowed 0..2\)"):
        adapter.check_layer(3)
    with pytest.raises(EngineError, match=r"head 2 out of range for k with 2 key/value heads"):
        adapter.check_head(2, "k")
    with pytest.raises(EngineError, match="layer must be an integer"):
        adapter.check_layer(1.5)
    assert adapter.check_head(3, "q") == 3


def test_a_missing_relative_model_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from modules.engine.adapters import ModelLoadError, load_model

    (tmp_path / "artifacts").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^no model at artifacts/no_model: directory not found$"):
        load_model("artifacts/no_model")


def test_a_fractional_head_index_is_refused_not_truncated():
    from modules.engine.adapters import EngineError
    from modules.engine.hooks import Site, as_site

    with pytest.raises(EngineError, match="a head index must be an integer, got 2.5"):
        as_site(Site("head_out", 0, heads=(2.5,)))
    assert as_site(Site("head_out", 0, heads=(2,))).heads == (2,)
