import pytest
import torch

from modules.engine.adapters import EngineError
from modules.engine.hooks import Site, capture, patch
from modules.engine.patchscope import SharedPrefix, backpatch, generate_greedy, patchscope
from tests.conftest import ARCHS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_transformers_generate(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 6)
    out = generate_greedy(model, ids, 5)
    expected = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=63)
    assert torch.equal(out.tokens, expected[:, 6:])
    assert out.logits.shape == (2, 5, 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_backpatching_a_layer_onto_itself_equals_the_unpatched_run(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 6)
    plain = generate_greedy(model, ids, 4)
    for layer in range(3):
        same = backpatch(model, ids, layer, layer, positions=[1, 5], max_new_tokens=4)
        assert torch.equal(same.tokens, plain.tokens) and torch.equal(same.logits, plain.logits)
    moved = backpatch(model, ids, 2, 0, positions=[5], max_new_tokens=4)
    assert (moved.logits - plain.logits).abs().max() > 1e-3


def _reforward_reference(model, target, site, value, steps):
    """Greedy decoding without a cache: every step re-runs the whole patched sequence."""
    seq, tokens, logits = target, [], []
    for _ in range(steps):
        with patch(model, {site: value}):
            step = model(seq, use_cache=False).logits[:, -1]
        tokens.append(step.argmax(-1))
        logits.append(step)
        seq = torch.cat([seq, tokens[-1][:, None]], 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prompt_pass_patch_persists_through_kv_cache_generation(tiny_model, arch):
    model, _ = tiny_model(arch)
    source, target = random_ids(2, 7, seed=4), random_ids(2, 6, seed=5)
    out = patchscope(model, source, 2, 3, target, 0, 4, max_new_tokens=5)
    with capture(model, [Site("resid_post", 2, (3,))]) as acts:
        model(source)
    tokens, logits = _reforward_reference(model, target, Site("resid_post", 0, (4,)), acts["resid_post.2"], 5)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.logits, logits, atol=2e-5, rtol=0)
    plain = generate_greedy(model, target, 5)
    assert (out.logits - plain.logits).abs().max() > 1e-3


def test_patchscope_broadcasts_one_source_state_and_checks_input(tiny_model):
    model, _ = tiny_model("llama")
    source, target = random_ids(1, 5, seed=4), random_ids(3, 6, seed=5)
    out = patchscope(model, source, 1, -1, target, 1, -1, max_new_tokens=2, source_site="resid_post",
                     target_site="resid_pre")
    assert out.tokens.shape == (3, 2)
    for row in range(3):
        single = patchscope(model, source, 1, -1, target[row:row + 1], 1, -1, max_new_tokens=2,
                            target_site="resid_pre")
        torch.testing.assert_close(single.logits[0], out.logits[row], atol=2e-5, rtol=0)
    with pytest.raises(EngineError, match="source batch 2 must be 1 or the target batch 3"):
        patchscope(model, random_ids(2, 5), 1, -1, target, 1, -1)
    with pytest.raises(EngineError, match="target_site must be one of"):
        patchscope(model, source, 1, -1, target, 1, -1, target_site="head_out")
    with pytest.raises(EngineError, match="max_new_tokens must be >= 1"):
        patchscope(model, source, 1, -1, target, 1, -1, max_new_tokens=0)
    with pytest.raises(EngineError, match="layer 3 out of range"):
        patchscope(model, source, 3, -1, target, 1, -1)


@pytest.mark.parametrize("arch", ARCHS + ("gemma3",))
def test_shared_prefix_gives_the_full_pass_logits_and_generation(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(3, 12)
    ids[:, :7] = ids[0, :7]
    prefix = SharedPrefix(model, ids[:1, :7])
    full = model(ids).logits
    torch.testing.assert_close(prefix.logits(ids[:, 7:]), full[:, 7:], atol=1e-5, rtol=0)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0  # a right-padded row: its real positions are unchanged
    torch.testing.assert_close(prefix.logits(ids[:, 7:], mask)[1, :3], full[1, 7:10], atol=1e-5, rtol=0)
    assert torch.equal(prefix.generate(ids[:, 7:], 4).tokens, generate_greedy(model, ids, 4).tokens)
    with pytest.raises(EngineError, match=r"prefix_ids must be \[1, length >= 1\]"):
        SharedPrefix(model, ids[:, :7])
