import pytest
import torch

from modules.engine import tiny
from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import capture
from modules.engine.lens import logit_lens, read_out
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
