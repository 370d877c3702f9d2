"""The engine on a tiny random Gemma-3 (q/k norms, sandwich norms, scaled embedding, norm offset,
sliding and global layers with different rotary bases, a window shorter than the prompt), checked
against an independent plain-torch forward written from the weights, and restart sweeps against
the naive loop. Fast: no real model needed."""
import math

import pytest
import torch
import torch.nn.functional as F

from modules.engine import tiny
from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import intervene
from modules.engine.lens import logit_lens
from modules.engine.patching import patch_sweep
from modules.engine.runner import Runner
from tests.engine.reference import _attention, _edit, _rms_norm, _rope

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64, init_std=0.15, sliding_window=3)


def ids(seed, batch=2, seq=9):
    return torch.randint(0, 63, (batch, seq), generator=torch.Generator().manual_seed(seed))


def reference_gemma3(model, input_ids, edits=None):
    """Gemma-3 text logits from the weights, calling no module's forward."""
    config, base = model.config, model.model
    batch, seq = input_ids.shape
    heads, kv, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    positions = torch.arange(seq)
    h = base.embed_tokens.weight[input_ids] * torch.tensor(config.hidden_size ** 0.5, dtype=torch.float32)
    for layer, block in enumerate(base.layers):
        kind = config.layer_types[layer]
        theta = config.rope_parameters[kind]["rope_theta"]
        h = _edit(edits, "resid_pre", layer, h)
        a = _rms_norm(h, block.input_layernorm, 1.0)
        att = block.self_attn
        q, k, v = (F.linear(a, proj.weight).reshape(batch, seq, n, dim)
                   for proj, n in ((att.q_proj, heads), (att.k_proj, kv), (att.v_proj, kv)))
        q, k, v = (_edit(edits, site, layer, x) for site, x in zip("qkv", (q, k, v)))
        q, k = _rms_norm(q, att.q_norm, 1.0), _rms_norm(k, att.k_norm, 1.0)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        window = config.sliding_window if kind == "sliding_attention" else None
        z = _attention(q, k, v, config.query_pre_attn_scalar ** -0.5, layer, edits, None, window)
        attn = _rms_norm(z.reshape(batch, seq, -1) @ att.o_proj.weight.t(), block.post_attention_layernorm, 1.0)
        h = h + _edit(edits, "attn_out", layer, attn)
        m = _rms_norm(h, block.pre_feedforward_layernorm, 1.0)
        mlp = block.mlp
        m = (F.gelu(m @ mlp.gate_proj.weight.t(), approximate="tanh") * (m @ mlp.up_proj.weight.t())
             ) @ mlp.down_proj.weight.t()
        h = h + _edit(edits, "mlp_out", layer, _rms_norm(m, block.post_feedforward_layernorm, 1.0))
        h = _edit(edits, "resid_post", layer, h)
    return _rms_norm(h, base.norm, 1.0) @ model.lm_head.weight.t()


@pytest.fixture(scope="module")
def model():
    return tiny.tiny_model("gemma3", **KW)


def test_tiny_gemma3_has_both_layer_types_and_two_rotary_bases(model):
    config = model.config
    assert config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    bases = {kind: config.rope_parameters[kind]["rope_theta"] for kind in set(config.layer_types)}
    assert bases["sliding_attention"] != bases["full_attention"]
    with torch.no_grad():
        torch.testing.assert_close(reference_gemma3(model, ids(0)), model(ids(0)).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "q", "k", "v",
                                  "pattern"])
def test_every_site_matches_the_plain_torch_reference(model, kind):
    noise = torch.Generator().manual_seed(5)

    def edit(act):
        return act * 0.5 + torch.randn(act.shape, generator=noise) * 0.1 if kind != "pattern" else act.flip(-1)
    for layer in (0, 1):  # a sliding and a global layer
        torch.manual_seed(0)
        noise.manual_seed(5)
        with torch.no_grad(), intervene(model, {f"{kind}.{layer}": edit}):
            ours = model(ids(1)).logits
        noise.manual_seed(5)
        with torch.no_grad():
            theirs = reference_gemma3(model, ids(1), {(kind, layer): edit})
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert (ours - model(ids(1)).logits).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_runner_reproduces_the_forward_with_padding_and_windows(attn):
    model = tiny.tiny_model("gemma3", n_layers=3, init_std=0.1, sliding_window=3, attn_implementation=attn)
    tokens = ids(3)
    padding = torch.ones_like(tokens)
    padding[0, :3] = 0
    for mask in (None, padding):
        expected = model(tokens, attention_mask=mask, output_hidden_states=True)
        runner = Runner(model, tokens, mask)
        resid = runner.record()
        keep = slice(None) if mask is None else mask.bool()
        torch.testing.assert_close(runner.adapter.logits(resid[-1])[keep], expected.logits[keep], atol=1e-5,
                                   rtol=1e-5)
        for layer in (0, 1):  # restarts at a sliding and at a global layer (its own rotary base)
            restarted = runner.layer(layer, resid[layer][:, 4:], 4, torch.arange(2))
            torch.testing.assert_close(restarted, resid[layer + 1][:, 4:], atol=1e-5, rtol=1e-5)
        # the last block from position 6 on, keys of 4..5 from its input (k_norm and rotary included)
        last = runner.last_layer_at(resid[2][:, 4:], 4, 6, torch.arange(2))
        torch.testing.assert_close(last, resid[3][:, 6:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "q", "k", "v",
                                  "pattern"])
def test_restart_sweeps_equal_the_naive_loop(model, kind):
    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]
    per_position = kind in ("resid_pre", "resid_post", "attn_out", "mlp_out")
    fast = patch_sweep(model, ids(2), ids(4), kind, metric, per_position=per_position)
    naive = patch_sweep(model, ids(2), ids(4), kind, metric, per_position=per_position, method="naive")
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    assert naive.std() > 1e-3


def test_lens_on_gemma3(model):
    adapter = get_adapter(model)
    assert adapter.spec.norm_offset == 1.0 and not adapter.spec.heads_are_linear
    lens = logit_lens(model, ids(0), "resid_post", positions=None)
    torch.testing.assert_close(lens[-1], model(ids(0)).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(EngineError, match="normalises the attention output after the projection"):
        logit_lens(model, ids(0), "head_out")
    # the embedding scale is applied by the embedding module itself
    assert math.isclose(float(adapter.embed(ids(0), torch.arange(9)[None]).std() /
                              model.model.embed_tokens.weight[ids(0)].std()), 32 ** 0.5, rel_tol=1e-5)
