"""The engine against TransformerLens 4 (TransformerBridge + transformer_lens.patching) and nnsight
0.8 (batched invokes) on the same tiny models. Each library gets its own copy of the weights, so
nothing one of them does to a model can leak into another's result."""
import warnings

import pytest
import torch

from modules.engine import tiny
from modules.engine.interventions import knockout
from modules.engine.patching import patch_head_sweep, patch_resid_sweep
from tests.conftest import MODEL_KWARGS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5


def logit_diff(logits):
    return logits[:, -1, 5] - logits[:, -1, 7]


def mean_logit_diff(logits):  # TransformerLens patching metrics return one number per cell
    return logit_diff(logits).mean()


def _copy(arch):
    return tiny.tiny_model(arch, **MODEL_KWARGS)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, tiny_model):
    arch = request.param
    _, tokenizer = tiny_model(arch)  # read from disk, as TransformerLens wants a tokenizer path
    return arch, _copy(arch), tokenizer, random_ids(3, 8, seed=1), random_ids(3, 8, seed=2)


@pytest.fixture(scope="module")
def bridge(setup):
    from transformer_lens.model_bridge import TransformerBridge

    arch, _, tokenizer, _, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(tokenizer.name_or_path, hf_model=_copy(arch), tokenizer=tokenizer)


def test_resid_and_head_sweeps_equal_transformerlens(setup, bridge):
    import transformer_lens.patching as tl_patching

    _, model, _, target, source = setup
    _, source_cache = bridge.run_with_cache(source)
    theirs = tl_patching.get_act_patch_resid_pre(bridge, target, source_cache, mean_logit_diff)
    ours = patch_resid_sweep(model, target, source, logit_diff).mean(-1)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=ATOL, rtol=0)
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(bridge, target, source_cache, mean_logit_diff)
    ours = patch_head_sweep(model, target, source, logit_diff).mean(-1)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=ATOL, rtol=0)
    assert theirs.std() > 1e-3


def test_knockout_equals_transformerlens(setup, bridge):
    _, model, _, target, _ = setup
    edges = [(7, 2), (6, 6), (7, 7)]

    def block(scores, hook):
        for q, k in edges:
            scores[:, :, q, k] = float("-inf")
        return scores
    theirs = bridge.run_with_hooks(target, fwd_hooks=[(f"blocks.{l}.attn.hook_attn_scores", block) for l in (0, 1)])
    with knockout(model, [0, 1], edges):
        ours = model(target).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert (ours - model(target).logits).abs().max() > 1e-3


def test_resid_and_head_sweeps_equal_nnsight_batched_invokes(setup):
    import nnsight
    from nnsight import LanguageModel

    arch, model, tokenizer, target, source = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = LanguageModel(_copy(arch), tokenizer=tokenizer)
    blocks = lm.transformer.h if arch == "gpt2" else lm.model.layers
    o_proj = [(b.attn.c_proj if arch == "gpt2" else b.self_attn.o_proj) for b in blocks]
    with lm.trace(source):  # nnsight reads modules in execution order
        resid, z = nnsight.save([]), nnsight.save([])
        for layer in range(3):
            resid.append(blocks[layer].input)
            z.append(o_proj[layer].input)
    with lm.trace() as tracer:
        by_resid = nnsight.save([])
        for layer in range(3):
            for pos in range(8):
                with tracer.invoke(target):
                    blocks[layer].input[:, pos] = resid[layer][:, pos]
                    by_resid.append(logit_diff(lm.lm_head.output))
    with lm.trace() as tracer:
        by_head = nnsight.save([])
        for layer in range(3):
            for head in range(4):
                with tracer.invoke(target):
                    cols = slice(head * 8, (head + 1) * 8)
                    o_proj[layer].input[:, :, cols] = z[layer][:, :, cols]
                    by_head.append(logit_diff(lm.lm_head.output))
    ours = patch_resid_sweep(model, target, source, logit_diff)
    torch.testing.assert_close(ours, torch.stack(by_resid).reshape(3, 8, 3), atol=ATOL, rtol=0)
    ours = patch_head_sweep(model, target, source, logit_diff)
    torch.testing.assert_close(ours, torch.stack(by_head).reshape(3, 4, 3), atol=ATOL, rtol=0)
