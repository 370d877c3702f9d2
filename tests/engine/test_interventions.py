import pytest
import torch

from modules.engine.adapters import EngineError
from modules.engine.hooks import Site, capture
from modules.engine.interventions import ablate, knockout, steer
from tests.conftest import ARCHS, random_ids
from tests.engine.reference import reference_logits, set_at

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_ablations_equal_the_reference(tiny_model, arch):
    model, _ = tiny_model(arch)
    target, reference = random_ids(2, 8, seed=1), random_ids(5, 8, seed=3)
    site = Site("head_out", 1, positions=(2, 6), heads=(1,))
    index = (slice(None), torch.tensor([[2], [6]]), torch.tensor([[1]]))
    with ablate(model, site, "zero"):
        zeroed = model(target).logits
    expected = reference_logits(model, target, {("head_out", 1): set_at(index, 0.0)})
    torch.testing.assert_close(zeroed, expected, atol=ATOL, rtol=0)

    with capture(model, ["head_out.1"]) as ref:
        model(reference)
    with ablate(model, site, "mean", reference_ids=reference):
        meaned = model(target).logits
    mean = ref["head_out.1"].mean(0)[torch.tensor([[2], [6]]), torch.tensor([[1]])]
    expected = reference_logits(model, target, {("head_out", 1): set_at(index, mean)})
    torch.testing.assert_close(meaned, expected, atol=ATOL, rtol=0)

    with ablate(model, site, "resample", reference_ids=reference, seed=7):
        resampled = model(target).logits
    draw = torch.randint(5, (2,), generator=torch.Generator().manual_seed(7))
    values = ref["head_out.1"][draw][:, torch.tensor([[2], [6]]), torch.tensor([[1]])]
    expected = reference_logits(model, target, {("head_out", 1): set_at(index, values)})
    torch.testing.assert_close(resampled, expected, atol=ATOL, rtol=0)
    with ablate(model, site, "resample", reference_ids=reference, seed=7):
        assert torch.equal(model(target).logits, resampled)  # seeded


def test_ablation_errors(tiny_model):
    model, _ = tiny_model("gpt2")
    with pytest.raises(EngineError, match="ablation method must be one of zero, mean, resample"):
        with ablate(model, "mlp_out.0", "noise"):
            pass
    with pytest.raises(EngineError, match="mean ablation needs reference_ids"):
        with ablate(model, "mlp_out.0", "mean"):
            pass


@pytest.mark.parametrize("arch", ARCHS)
def test_steering_adds_a_scaled_direction(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 8)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with steer(model, "resid_post.0", direction, scale=3.0, positions=[5]):
        steered = model(ids).logits
    add = lambda act: torch.cat([act[:, :5], act[:, 5:6] + 3.0 * direction, act[:, 6:]], 1)  # noqa: E731
    torch.testing.assert_close(steered, reference_logits(model, ids, {("resid_post", 0): add}), atol=ATOL, rtol=0)
    with pytest.raises(EngineError, match="steering direction has size 8"):
        with steer(model, "resid_post.0", torch.ones(8)):
            model(ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_knockout_equals_the_reference_and_sdpa(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 8)
    edges = [(7, 3), (7, 0), (5, 5)]
    blocked = torch.zeros(8, 8, dtype=torch.bool)
    for q, k in edges:
        blocked[q, k] = True
    with knockout(model, [0, 2], edges):
        knocked = model(ids).logits
    expected = reference_logits(model, ids, blocked={0: blocked, 2: blocked})
    torch.testing.assert_close(knocked, expected, atol=ATOL, rtol=0)
    assert (knocked[:, 5:] - model(ids).logits[:, 5:]).abs().max() > 1e-3
    torch.testing.assert_close(knocked[:, :5], model(ids).logits[:, :5], atol=0, rtol=0)
    with knockout(model, [1], blocked[None].expand(2, -1, -1), heads=[1, 3]):
        per_head = model(ids).logits
    per_head_blocked = torch.zeros(4, 8, 8, dtype=torch.bool)
    per_head_blocked[[1, 3]] = blocked
    expected = reference_logits(model, ids, blocked={1: per_head_blocked})
    torch.testing.assert_close(per_head, expected, atol=ATOL, rtol=0)
    sdpa, _ = tiny_model(arch, attn_implementation="sdpa")
    with knockout(sdpa, [0, 2], edges):
        torch.testing.assert_close(sdpa(ids).logits, knocked, atol=ATOL, rtol=0)


def test_knockout_errors(tiny_model):
    model, _ = tiny_model("llama")
    ids = random_ids(1, 8)
    with pytest.raises(EngineError, match="no key to attend to"):
        with knockout(model, [0], [(0, 0)]):
            model(ids)
    with pytest.raises(EngineError, match="knockout key position 8 out of range"):
        with knockout(model, [0], [(7, 8)]):
            model(ids)
    with pytest.raises(EngineError, match="layer 5 out of range"):
        with knockout(model, [5], [(7, 1)]):
            pass
    with pytest.raises(EngineError, match="edges tensor must be boolean"):
        with knockout(model, [0], torch.zeros(4, 4, dtype=torch.bool)):
            model(ids)
