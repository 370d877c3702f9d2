import pytest
import torch

from modules.engine.adapters import EngineError
from modules.engine.hooks import SITE_KINDS, Site, capture, capture_positions, intervene, patch
from tests.conftest import ARCHS, random_ids
from tests.engine.reference import reference_logits, set_at

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_forward_matches_the_model(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 8)
    torch.testing.assert_close(reference_logits(model, ids), model(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_a_site_with_its_own_value_is_bit_identical(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = random_ids(2, 8)
    clean = model(ids).logits
    sites = [f"{kind}.{layer}" for kind in SITE_KINDS for layer in (0, 2)]
    with capture(model, sites) as acts:
        model(ids)
    for site in sites:  # one site at a time, and all at once
        with patch(model, {site: acts[site]}):
            assert torch.equal(model(ids).logits, clean), site
    with patch(model, dict(acts)):
        assert torch.equal(model(ids).logits, clean)
    selected = Site("head_out", 1, positions=(2, 5), heads=(1,))
    with capture(model, [selected]) as own:
        model(ids)
    with patch(model, {selected: own[selected]}):
        assert torch.equal(model(ids).logits, clean)


# (site, positions, heads, reference index into the canonical activation)
CASES = [
    ("resid_pre", (3,), None, (slice(None), 3)),
    ("resid_post", (1, 6), None, (slice(None), [1, 6])),
    ("attn_out", (5,), None, (slice(None), 5)),
    ("mlp_out", None, None, (slice(None),)),
    ("head_out", None, (2,), (slice(None), slice(None), 2)),
    ("head_out", (4,), (0, 3), (slice(None), torch.tensor([[4]]), torch.tensor([[0, 3]]))),
    ("q", (6,), (1,), (slice(None), 6, 1)),
    ("k", (2,), (1,), (slice(None), 2, 1)),
    ("v", None, (0,), (slice(None), slice(None), 0)),
    ("pattern", (7,), (3,), (slice(None), 3, 7)),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind,positions,heads,index", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_patch_type_equals_a_manual_recomputation(tiny_model, arch, kind, positions, heads, index):
    model, _ = tiny_model(arch)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    layer = 1
    site = Site(kind, layer, positions, heads)
    with capture(model, [Site(kind, layer)]) as full, capture(model, [site]) as selected:
        model(source)
    with patch(model, {site: selected[site]}):
        patched = model(target).logits
    source_values = full[Site(kind, layer)][index]
    expected = reference_logits(model, target, edits={(kind, layer): set_at(index, source_values)})
    torch.testing.assert_close(patched, expected, atol=ATOL, rtol=0)
    assert (patched - model(target).logits).abs().max() > 1e-3  # the patch did something


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["resid_pre", "attn_out", "head_out", "k", "v", "q"])
def test_a_patch_at_position_p_leaves_earlier_logits_unchanged(tiny_model, arch, kind):
    model, _ = tiny_model(arch)
    target, source = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    site = Site(kind, 0, positions=(4,))
    with capture(model, [site]) as acts:
        model(source)
    with patch(model, {site: acts[site]}):
        patched = model(target).logits
    clean = model(target).logits
    assert torch.equal(patched[:, :4], clean[:, :4])
    assert (patched[:, 4:] - clean[:, 4:]).abs().max() > 1e-3


def test_capture_selects_positions_and_heads(tiny_model):
    model, _ = tiny_model("llama")
    ids = random_ids(2, 8)
    with capture(model, ["k.2", Site("q", 2, positions=(-1, 0), heads=(3,)), Site("pattern", 0, (5,), (1, 2))]) as acts:
        model(ids)
    with capture(model, ["q.2", "pattern.0"]) as full:
        model(ids)
    assert acts["q.2"].shape == (2, 2, 1, 8)
    assert torch.equal(acts["q.2"], full["q.2"][:, [7, 0]][:, :, [3]])
    assert torch.equal(acts[("pattern", 0)], full["pattern.0"][:, [1, 2]][:, :, [5]])
    assert acts["k.2"].shape == (2, 8, 2, 8)
    with pytest.raises(KeyError, match="was not captured"):
        acts["v.2"]


def test_capture_positions_batches_rows_and_keeps_only_the_positions(tiny_model):
    model, _ = tiny_model("gpt2")
    ids = random_ids(5, 8)
    with capture(model, ["resid_post.0", "resid_post.1"]) as full:
        model(ids)
    acts = capture_positions(model, ids, ["resid_post.0", "resid_post.1"], [-2, -1], batch_size=2)
    assert set(acts) == {"resid_post.0", "resid_post.1"}
    for key, value in acts.items():
        assert value.shape == (5, 2, full[key].shape[-1])
        assert torch.allclose(value, full[key][:, [6, 7]], atol=1e-6)


def test_intervene_edits_compose_and_are_removed_on_exit(tiny_model):
    model, _ = tiny_model("gpt2")
    ids = random_ids(2, 8)
    clean = model(ids).logits
    with intervene(model, {"mlp_out.0": lambda act: act * 0, Site("resid_post", 2, (7,)): lambda act: act * 2}):
        edited = model(ids).logits
    double_last = lambda a: torch.cat([a[:, :7], a[:, 7:] * 2], 1)  # noqa: E731
    expected = reference_logits(model, ids, edits={("mlp_out", 0): lambda a: a * 0, ("resid_post", 2): double_last})
    torch.testing.assert_close(edited, expected, atol=ATOL, rtol=0)
    assert torch.equal(model(ids).logits, clean)
    assert model.config._attn_implementation == "eager"


def test_bad_sites_and_positions_raise_clear_errors(tiny_model):
    model, _ = tiny_model("llama")
    ids = random_ids(2, 8)
    with pytest.raises(EngineError, match="unknown site 'resid_mid'"):
        with capture(model, ["resid_mid.0"]):
            pass
    with pytest.raises(EngineError, match="must look like 'kind.layer'"):
        with capture(model, ["resid_pre"]):
            pass
    with pytest.raises(EngineError, match="layer 3 out of range"):
        with capture(model, ["resid_pre.3"]):
            pass
    with pytest.raises(EngineError, match="head 4 out of range for head_out with 4 heads"):
        with capture(model, [Site("head_out", 0, heads=(4,))]):
            pass
    with pytest.raises(EngineError, match="site mlp_out has no heads"):
        with capture(model, [Site("mlp_out", 0, heads=(1,))]):
            pass
    with pytest.raises(EngineError, match=r"position 8 out of range for a sequence of length 8"):
        with capture(model, [Site("resid_pre", 0, positions=(8,))]):
            model(ids)
    with capture(model, ["resid_pre.1"]) as acts:
        model(random_ids(2, 6))
    with pytest.raises(EngineError, match=r"values for resid_pre.1 have shape \(2, 6, 32\) but the site selects "
                                          r"\(2, 8, 32\)"):
        with patch(model, {"resid_pre.1": acts["resid_pre.1"]}):
            model(ids)
