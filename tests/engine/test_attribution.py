import pytest
import torch

from modules.engine import tiny
from modules.engine.attribution import attribution_patch, confirm_top_k
from modules.engine.hooks import Site, capture, selection_index
from modules.engine.patching import patch_sweep
from tests.conftest import MODEL_KWARGS, random_ids
from tests.engine.reference import reference_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def logit_diff(logits):
    return logits[:, -1, 5] - logits[:, -1, 7]


def _derivative(model, target, source, site: Site, step=1e-5):
    """d metric / dt of the target run with the site moved to a + t (a' - a), at t = 0: what
    attribution patching estimates to first order. A central finite difference on the float64
    reference forward (the models' own RMSNorm rounds through float32)."""
    with capture(model, [Site(site.kind, site.layer)]) as src:
        model(source)
    full = src[site.key]
    index = selection_index(site.kind, site.positions, site.heads,
                            full.shape[2 if site.kind == "pattern" else 1], full.device)
    values = []
    for t in (step, -step):
        def move(act, t=t):
            act = act.clone()
            act[index] = act[index] + t * (full[index] - act[index])
            return act
        values.append(logit_diff(reference_logits(model, target, {(site.kind, site.layer): move})))
    return (values[0] - values[1]) / (2 * step)


@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_attribution_is_the_first_order_effect(arch):
    kwargs = {**MODEL_KWARGS, **({"sliding_window": 5} if arch == "mistral" else {})}
    model = tiny.tiny_model(arch, dtype=torch.float64, **kwargs)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    resid = attribution_patch(model, target, source, "resid_pre", logit_diff)
    heads = attribution_patch(model, target, source, "head_out", logit_diff)
    pattern = attribution_patch(model, target, source, "pattern", logit_diff, per_position=True, positions=[6, 7])
    keys = attribution_patch(model, target, source, "k", logit_diff, positions=[3, 4])
    assert resid.shape == (3, 8, 2) and heads.shape == (3, 4, 2) and pattern.shape == (3, 2, 4, 2)
    checks = [(resid[1, 5], Site("resid_pre", 1, (5,))), (resid[2, 7], Site("resid_pre", 2, (7,))),
              (heads[0, 2], Site("head_out", 0, None, (2,))), (heads[2, 1], Site("head_out", 2, None, (1,))),
              (pattern[1, 1, 3], Site("pattern", 1, (7,), (3,))), (keys[0, 1], Site("k", 0, (3, 4), (1,)))]
    for estimate, site in checks:
        torch.testing.assert_close(estimate, _derivative(model, target, source, site), atol=1e-6, rtol=1e-5)
    # the estimate is first order: for a whole-residual patch the exact effect differs
    exact = patch_sweep(model, target, source, "resid_pre", logit_diff, layers=[1], positions=[5])[0, 0]
    baseline = logit_diff(model(target).logits)
    assert not torch.allclose(exact - baseline, resid[1, 5], atol=1e-6)


def test_confirm_top_k_patches_the_strongest_cells_exactly(tiny_model):
    model, _ = tiny_model("llama")
    target, source = random_ids(3, 8, seed=1), random_ids(3, 8, seed=2)
    top = confirm_top_k(model, target, source, "head_out", logit_diff, k=4)
    estimate = attribution_patch(model, target, source, "head_out", logit_diff)
    order = estimate.mean(-1).abs().flatten().argsort(descending=True)[:4]
    assert [layer * 4 + head for layer, head in top.grid_index] == order.tolist()
    assert [(c.layer, c.head) for c in top.cells] == top.grid_index
    exact = patch_sweep(model, target, source, "head_out", logit_diff) - logit_diff(model(target).logits)
    for (layer, head), row in zip(top.grid_index, top.exact):
        torch.testing.assert_close(row, exact[layer, head], atol=2e-5, rtol=0)
    torch.testing.assert_close(top.estimate, torch.stack([estimate[l, h] for l, h in top.grid_index]))
    with pytest.raises(ValueError, match="k must be in 1..12"):
        confirm_top_k(model, target, source, "head_out", logit_diff, k=13)
    with pytest.raises(ValueError, match="scores have grid shape"):
        confirm_top_k(model, target, source, "head_out", logit_diff, k=2, scores=torch.zeros(2, 4, 3))
