"""Restart sweeps patch only where the source differs from the target: on minimal pairs (a shared
prefix), cells before the first differing position are the target's own result and later cells
recompute only from that position. Checked against the naive hook loop for every site."""
import pytest
import torch

from modules.engine import tiny
from modules.engine.hooks import SITE_KINDS
from modules.engine.patching import Cell, patch_cells, patch_sweep, shared_prefix

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5


def metric(logits):
    return logits[:, -1, 5] - logits[:, -1, 7]


def minimal_pair(seed=1, differ_at=4, seq=9):
    target = torch.randint(0, 63, (3, seq), generator=torch.Generator().manual_seed(seed))
    source = target.clone()
    source[:, differ_at] = (source[:, differ_at] + 7) % 63
    source[1, differ_at + 2] = (source[1, differ_at + 2] + 3) % 63
    return target, source


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def model(request):
    return tiny.tiny_model(request.param, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64,
                           init_std=0.15, sliding_window=None if request.param == "gpt2" else 5)


@pytest.mark.parametrize("site", SITE_KINDS)
def test_minimal_pairs_restart_equals_naive(model, site):
    target, source = minimal_pair()
    for per_position in (True, False):
        fast = patch_sweep(model, target, source, site, metric, per_position=per_position, max_rows=9)
        naive = patch_sweep(model, target, source, site, metric, per_position=per_position, method="naive")
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
        assert naive.std() > 1e-3


def test_cells_before_the_first_difference_are_the_targets_own(model):
    target, source = minimal_pair()
    clean = metric(model(target).logits)
    values = patch_sweep(model, target, source, "resid_pre", metric, per_position=True)
    torch.testing.assert_close(values[:, :4], clean.expand(3, 4, 3), atol=1e-5, rtol=0)
    assert (values[:, 4] - clean).abs().max() > 1e-3
    # identical prompts: every cell is a no-op, nothing runs, values are exactly the clean ones
    same = patch_cells(model, target, target.clone(), "head_out", [Cell(l, None, h) for l in range(3)
                                                                   for h in range(4)], metric)
    torch.testing.assert_close(same, clean.expand(12, 3), atol=1e-5, rtol=0)


def test_logits_at_every_position_with_narrowed_cells(model):
    target, source = minimal_pair()
    fast = patch_sweep(model, target, source, "head_out", None, per_position=False, logit_positions=None)
    naive = patch_sweep(model, target, source, "head_out", None, per_position=False, logit_positions=None,
                        method="naive")
    torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
    clean = model(target).logits
    torch.testing.assert_close(fast[..., :4, :], clean[None, None, :, :4].expand_as(fast[..., :4, :]), atol=ATOL,
                               rtol=0)


def test_shared_prefix_needs_equal_tokens_and_masks():
    target, source = minimal_pair()
    mask = torch.ones_like(target)
    assert shared_prefix(target, source) == 4 and shared_prefix(target, target.clone()) == 9
    assert shared_prefix(target, source, mask, mask.clone()) == 4
    assert shared_prefix(target, source, mask, None) == 0  # the runs may differ: nothing is skipped
    other = mask.clone()
    other[0, 0] = 0
    assert shared_prefix(target, source, mask, other) == 0


def test_left_padded_minimal_pairs_restart_equals_naive(model):
    target, source = minimal_pair(differ_at=6)
    mask = torch.ones_like(target)
    mask[1, :2] = 0
    for site in ("resid_pre", "head_out", "pattern"):
        kwargs = dict(attention_mask=mask, source_attention_mask=mask)
        fast = patch_sweep(model, target, source, site, metric, **kwargs)
        naive = patch_sweep(model, target, source, site, metric, method="naive", **kwargs)
        torch.testing.assert_close(fast, naive, atol=ATOL, rtol=0)
