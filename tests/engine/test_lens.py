import pytest
import torch

from modules.engine import tiny
from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import capture, intervene
from modules.engine.lens import head_lens, logit_lens, read_out
from tests.conftest import ARCHS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_lens_is_the_unembedded_hidden_state(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 8)
    out = model(ids, output_hidden_states=True)
    lens = logit_lens(model, ids, "resid_post", positions=None)
    assert lens.shape == (3, 2, 8, 64)
    assert torch.equal(lens[-1], out.logits)
    for layer in range(2):
        expected = model.lm_head(get_adapter(model).final_norm(out.hidden_states[layer + 1]))
        torch.testing.assert_close(lens[layer], expected, atol=ATOL, rtol=0)
    pre = logit_lens(model, ids, "resid_pre", layers=[1], positions=[-1, 2])
    torch.testing.assert_close(pre[0], lens[0][:, [7, 2]], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_direct_logit_attribution_adds_up_to_the_logits(tiny_model, arch):
    model, _ = tiny_model(arch)
    adapter = get_adapter(model)
    ids = random_ids(2, 8)
    logits = model(ids).logits
    embed = logit_lens(model, ids, "resid_pre", layers=[0], positions=None, normalize="final")[0]
    attn = logit_lens(model, ids, "attn_out", positions=None)
    mlp = logit_lens(model, ids, "mlp_out", positions=None)
    total = embed + attn.sum(0) + mlp.sum(0)
    bias = getattr(adapter.final_norm, "bias", None)
    if bias is not None:  # LayerNorm: its bias reaches the logits on its own
        total = total + model.lm_head(bias)
    torch.testing.assert_close(total, logits, atol=1e-4, rtol=0)
    heads = logit_lens(model, ids, "head_out", positions=None)
    assert heads.shape == (3, 2, 8, 4, 64)
    head_sum = heads.sum(-2)
    for layer in range(3):
        expected = attn[layer]
        o_bias = adapter.o_proj_bias(layer)
        if o_bias is not None:  # GPT-2: the projection's bias belongs to no head
            expected = expected - _bias_logits(model, ids, o_bias)
        torch.testing.assert_close(head_sum[layer], expected, atol=1e-4, rtol=0)
    assert (arch == "gpt2") == (adapter.o_proj_bias(0) is not None)


def _bias_logits(model, ids, bias):
    """DLA of a constant vector added at every position (the output projection's bias)."""
    adapter = get_adapter(model)
    with capture(model, [f"resid_post.{adapter.n_layers - 1}"]) as acts:
        model(ids)
    final = acts[f"resid_post.{adapter.n_layers - 1}"]
    return read_out(adapter, bias.expand_as(final), final, "final")


def test_lens_errors_and_nonlinear_heads(tiny_model):
    model, _ = tiny_model("gpt2")
    ids = random_ids(1, 8)
    with pytest.raises(EngineError, match="logit lens site must be one of"):
        logit_lens(model, ids, "pattern")
    with pytest.raises(EngineError, match="normalize must be"):
        logit_lens(model, ids, normalize="mean")
    gemma = tiny.tiny_model("gemma2", n_layers=2)
    with pytest.raises(EngineError, match="per-head outputs do not add up"):
        logit_lens(gemma, ids, "head_out")
    assert logit_lens(gemma, ids, "attn_out").shape == (2, 1, 1, 64)


# --- per-head lens (head_lens) ---------------------------------------------------------------------
HEAD_ARCHS = ARCHS + ("gemma2", "gemma3")


def _mlp_input_norm(model):
    """The norm whose input is resid_mid (the residual between attention and MLP), by architecture."""
    return {"gpt2": "ln_2", "gemma2": "pre_feedforward_layernorm", "gemma3_text": "pre_feedforward_layernorm"
            }.get(model.config.model_type, "post_attention_layernorm")


def _direct_lens(model, x):
    """Final norm, unembedding and soft-cap written out from the modules, not the adapter."""
    logits = model.lm_head(get_adapter(model).final_norm(x))
    cap = getattr(model.config, "final_logit_softcapping", None)
    return (torch.tanh(logits / cap) * cap if cap else logits).softmax(-1)


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_head_lens_p_mid_is_the_lens_of_resid_mid(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids, target = random_ids(3, 8, seed=4), torch.tensor([5, 9, 60])
    mids, handles = [], []
    for block in get_adapter(model).blocks:  # resid_mid as the MLP's input norm receives it
        norm = block.get_submodule(_mlp_input_norm(model))
        handles.append(norm.register_forward_pre_hook(lambda module, args: mids.append(args[0][:, -2].detach())))
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    lens = head_lens(model, ids, target, position=-2)
    assert lens.p_mid.shape == (3, 3) and lens.p_head.shape == (3, 4, 3)
    expected = torch.stack([_direct_lens(model, mid)[torch.arange(3), target] for mid in mids])
    torch.testing.assert_close(lens.p_mid, expected, atol=1e-6, rtol=1e-4)
    only_last = head_lens(model, ids, 9, position=6, layers=[2])
    torch.testing.assert_close(only_last.p_mid[0], _direct_lens(model, mids[-1])[:, 9], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_head_contributions_add_up_to_the_attention_output(arch):
    model = tiny.tiny_model(arch, n_layers=2, init_std=0.15)
    adapter = get_adapter(model)
    with torch.no_grad():  # a bias (GPT-2) and norm scales that are not all ones (Gemma)
        for layer in range(2):
            bias = adapter.o_proj_bias(layer)
            if bias is not None:
                bias.normal_(0, 0.5)
            if not adapter.spec.heads_are_linear:
                adapter.module(layer, adapter.spec.attn_out).weight.normal_(0, 0.5)
    ids = random_ids(2, 7, seed=5)
    with capture(model, ["head_out.1", "attn_out.1", "resid_pre.1"]) as acts:
        model(ids)
    parts = adapter.head_contributions(1, acts["head_out.1"])
    bias = adapter.o_proj_bias(1)
    extra = 3 * bias if bias is not None else 0.0  # every head carries the bias once
    torch.testing.assert_close(parts.sum(-2) - extra, acts["attn_out.1"], atol=1e-5, rtol=1e-5)
    if not adapter.spec.heads_are_linear:  # the frozen scale matters: normalising each head apart does not add up
        norm = adapter.module(1, adapter.spec.attn_out)
        naive = norm(adapter._project_heads(1, acts["head_out.1"])).sum(-2)
        assert (naive - acts["attn_out.1"]).abs().max() > 0.1
        return
    # linear heads: p_head is the lens of resid_pre + attention with every other head zeroed
    head = 2
    keep = torch.zeros(4, 1)
    keep[head] = 1.0
    with intervene(model, {"head_out.1": lambda x: x * keep}), capture(model, ["attn_out.1"]) as alone:
        model(ids)
    lens = head_lens(model, ids, 11, layers=[1])
    expected = _direct_lens(model, acts["resid_pre.1"][:, -1] + alone["attn_out.1"][:, -1])[:, 11]
    torch.testing.assert_close(lens.p_head[0, head], expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_head_lens_with_one_head_is_the_attention_lens(tiny_model, arch):
    model, _ = tiny_model(arch, n_heads=1, n_kv_heads=1)
    ids = random_ids(2, 6, seed=6)
    lens = head_lens(model, ids, torch.tensor([3, 4]))
    assert lens.p_head.shape == (3, 1, 2)
    torch.testing.assert_close(lens.p_head[:, 0], lens.p_mid, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(lens.score(), torch.zeros(3, 1, 2), atol=1e-4, rtol=0)
    assert lens.p_mid.min() > 0


def test_head_lens_score_and_errors(tiny_model):
    model, _ = tiny_model("llama")
    ids = random_ids(2, 8)
    lens = head_lens(model, ids, 7)
    torch.testing.assert_close(lens.score(), 1 - lens.p_head / lens.p_mid[:, None])
    for kwargs, message in [(dict(layers=[3]), "layer 3 out of range for a 3-layer model"),
                            (dict(position=8), "position 8 out of range for a sequence of length 8"),
                            (dict(position=-9), "position -9 out of range")]:
        with pytest.raises(EngineError, match=message) as error:
            head_lens(model, ids, 7, **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="token id out of range"):
        head_lens(model, ids, 64)


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])  # Gemma-2: the final soft-cap applies per column too
def test_adapter_logits_of_chosen_tokens(arch):
    model = tiny.tiny_model(arch, n_layers=1, init_std=0.5)
    adapter = get_adapter(model)
    assert (arch == "gemma2") == bool(getattr(model.config, "final_logit_softcapping", None))
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(adapter.logits(x, tokens=[5, 0, 63]), adapter.logits(x)[..., [5, 0, 63]])
