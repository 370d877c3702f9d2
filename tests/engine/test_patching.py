import pytest
import torch

from modules.engine.adapters import EngineError
from modules.engine.hooks import SITE_KINDS, Site, capture
from modules.engine.patching import (Cell, patch_attn_out_sweep, patch_cells, patch_head_by_pos_sweep,
                                     patch_head_sweep, patch_mlp_out_sweep, patch_resid_sweep, patch_sweep)
from tests.conftest import ARCHS, random_ids
from tests.engine.reference import reference_logits, set_at

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5


def logit_diff(logits):
    return logits[:, -1, 5] - logits[:, -1, 7]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITE_KINDS)
def test_restart_and_batched_cells_equal_the_naive_loop(tiny_model, arch, site):
    model, _ = tiny_model(arch)
    target, source = random_ids(3, 8, seed=1), random_ids(3, 8, seed=2)
    for per_position in (True, False):
        # max_rows=9: three cells per pass, so the cells of a shared first position are split
        fast = patch_sweep(model, target, source, site, logit_diff, per_position=per_position, max_rows=9)
        naive = patch_sweep(model, target, source, site, logit_diff, per_position=per_position, method="naive")
        assert fast.shape == naive.shape
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
        assert naive.std() > 1e-3  # cells differ: the comparison is not vacuous


@pytest.mark.parametrize("arch", ARCHS)
def test_sweep_logits_at_every_position_match_and_earlier_positions_are_the_targets(tiny_model, arch):
    model, _ = tiny_model(arch)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    fast = patch_resid_sweep(model, target, source, layers=[0, 2], positions=[2, 6], logit_positions=None)
    naive = patch_resid_sweep(model, target, source, layers=[0, 2], positions=[2, 6], logit_positions=None,
                              method="naive")
    assert fast.shape == (2, 2, 2, 8, 64)  # layers, positions, batch, logit positions, vocab
    torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
    clean = model(target).logits
    torch.testing.assert_close(fast[:, 1, :, :6], clean[None, :, :6].expand(2, -1, -1, -1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_sweep_cells_equal_the_reference_forward(tiny_model, arch):
    model, _ = tiny_model(arch)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    with capture(model, ["resid_pre.1", "head_out.2", "k.0"]) as src:
        model(source)
    cells = patch_cells(model, target, source, "resid_pre", [(1, (3,), None), (1, (2, 5), None)], logit_diff)
    for values, pos in zip(cells, ([3], [2, 5])):
        index = (slice(None), pos)
        expected = reference_logits(model, target, {("resid_pre", 1): set_at(index, src["resid_pre.1"][index])})
        torch.testing.assert_close(values, logit_diff(expected), atol=ATOL, rtol=0)
    heads = patch_head_sweep(model, target, source, logit_diff, layers=[2])
    for head in range(4):
        index = (slice(None), slice(None), head)
        expected = reference_logits(model, target, {("head_out", 2): set_at(index, src["head_out.2"][index])})
        torch.testing.assert_close(heads[0, head], logit_diff(expected), atol=ATOL, rtol=0)
    keys = patch_head_sweep(model, target, source, logit_diff, site="k", layers=[0], positions=[4, 7])
    assert keys.shape == (1, 4 if arch == "gpt2" else 2, 2)  # k indexes key/value heads (GQA)
    index = (slice(None), torch.tensor([[4], [7]]), torch.tensor([[1]]))
    expected = reference_logits(model, target, {("k", 0): set_at(index, src["k.0"][index])})
    torch.testing.assert_close(keys[0, 1], logit_diff(expected), atol=ATOL, rtol=0)


def test_named_wrappers_have_transformerlens_shapes(tiny_model):
    model, _ = tiny_model("llama")
    target, source = random_ids(2, 6, seed=1), random_ids(2, 6, seed=2)
    assert patch_resid_sweep(model, target, source, logit_diff).shape == (3, 6, 2)
    assert patch_resid_sweep(model, target, source, logit_diff, site="resid_post").shape == (3, 6, 2)
    assert patch_attn_out_sweep(model, target, source, logit_diff).shape == (3, 6, 2)
    assert patch_mlp_out_sweep(model, target, source, logit_diff).shape == (3, 6, 2)
    assert patch_head_sweep(model, target, source, logit_diff).shape == (3, 4, 2)
    assert patch_head_sweep(model, target, source, logit_diff, site="v").shape == (3, 2, 2)
    assert patch_head_by_pos_sweep(model, target, source, logit_diff, positions=[1, 5]).shape == (3, 2, 4, 2)
    assert patch_head_sweep(model, target, source, logit_diff, site="pattern", heads=[0]).shape == (3, 1, 2)


@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_left_padded_prompts_restart_equals_naive(tiny_model, arch):
    model, _ = tiny_model(arch)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    mask = torch.ones_like(target)
    mask[1, :2] = 0
    for site in ("resid_pre", "head_out"):
        kwargs = dict(attention_mask=mask, source_attention_mask=mask, positions=[2, 5, 7])
        fast = patch_sweep(model, target, source, site, logit_diff, **kwargs)
        naive = patch_sweep(model, target, source, site, logit_diff, method="naive", **kwargs)
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)


def test_sdpa_model_restart_equals_naive(tiny_model):
    model, _ = tiny_model("llama", attn_implementation="sdpa")
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    for site in ("resid_pre", "pattern"):
        fast = patch_sweep(model, target, source, site, logit_diff)
        naive = patch_sweep(model, target, source, site, logit_diff, method="naive")
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
    assert model.config._attn_implementation == "sdpa"


def test_sweep_errors_are_clear(tiny_model):
    model, _ = tiny_model("gpt2")
    target = random_ids(2, 8)
    with pytest.raises(EngineError, match=r"source_ids has shape \(2, 7\) but target_ids has \(2, 8\); patching "
                                          r"needs prompts of equal length"):
        patch_resid_sweep(model, target, random_ids(2, 7), logit_diff)
    with pytest.raises(EngineError, match="unknown site 'resid'"):
        patch_sweep(model, target, target, "resid", logit_diff)
    with pytest.raises(EngineError, match="layer 3 out of range"):
        patch_resid_sweep(model, target, target, logit_diff, layers=[3])
    with pytest.raises(EngineError, match="head 4 out of range"):
        patch_head_sweep(model, target, target, logit_diff, heads=[4])
    with pytest.raises(EngineError, match="position -9 out of range for a sequence of length 8"):
        patch_resid_sweep(model, target, target, logit_diff, positions=[-9])
    with pytest.raises(EngineError, match="site mlp_out has no heads"):
        patch_cells(model, target, target, "mlp_out", [Cell(0, None, 1)], logit_diff)
    with pytest.raises(EngineError, match="max_rows"):
        patch_resid_sweep(model, target, target, logit_diff, max_rows=1)
    with pytest.raises(EngineError, match="metric must return one value per example"):
        patch_resid_sweep(model, target, target, lambda logits: logits.mean())
    with pytest.raises(EngineError, match="method must be"):
        patch_resid_sweep(model, target, target, logit_diff, method="fast")


def test_sweeps_are_deterministic(tiny_model):
    model, _ = tiny_model("mistral")
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    first = patch_head_by_pos_sweep(model, target, source, logit_diff)
    assert torch.equal(first, patch_head_by_pos_sweep(model, target, source, logit_diff))
    assert Site("head_out", 0).key == "head_out.0"
