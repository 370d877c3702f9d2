import pytest
import torch
from tests.conftest import gpt2_hidden_states

from modules.engine.probes import probe_grid, split_indices, train_probes


@pytest.fixture(scope="module")
def token_grid():
    """Tiny random GPT-2 residual stream [layers + 1, positions, n, d]; label: token at position 2 < 25."""
    ids, hidden = gpt2_hidden_states(240, 4)
    states = torch.stack(hidden)  # [3, n, 4, d]
    return states.transpose(1, 2), (ids[:, 2] < 25).long()


def test_split_is_stratified_and_seeded():
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 4)
    train, test = split_indices(labels, 0.25, seed=3)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(44))
    assert [(labels[test] == c).sum().item() for c in range(3)] == [8, 2, 1]
    assert torch.equal(split_indices(labels, 0.25, seed=3)[1], test)
    assert not torch.equal(split_indices(labels, 0.25, seed=4)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(labels, 1.0)


def test_grid_finds_token_only_where_it_is_visible(token_grid):
    acts, labels = token_grid
    grid = probe_grid(acts, labels, seed=0)
    table = grid.table.set_index(["layer", "position"])
    assert len(table) == 12 and list(grid.table.columns) == \
        ["layer", "position", "accuracy", "ci_low", "ci_high", "train_accuracy", "n_test"]
    # The token at position 2 is linearly readable from its own residual stream at every layer ...
    assert table.loc[(0, 2), "accuracy"] >= 0.9
    assert (table.xs(2, level="position")["accuracy"] >= 0.8).all()
    # ... and nowhere before it (causal attention): there labels are independent of activations.
    before = table[table.index.get_level_values("position") < 2]
    assert (before["accuracy"] < 0.75).all()
    assert ((before["ci_low"] <= before["accuracy"]) & (before["accuracy"] <= before["ci_high"])).all()
    assert set(grid.directions) == set(table.index)
    assert torch.allclose(grid.directions[(0, 2)].norm(), torch.tensor(1.0))


def test_accuracy_and_raw_weight_match_manual_computation(token_grid):
    acts, labels = token_grid
    x = acts[0, 2]
    res = train_probes(x, labels, epochs=80, seed=1)
    _, test = split_indices(labels, 0.25, seed=1)
    with torch.no_grad():
        logits = res.module(x.unsqueeze(0))[0]
    assert res.test_accuracy.item() == pytest.approx((logits.argmax(-1) == labels)[test].float().mean().item())
    assert res.n_test == len(test)
    # Raw-space weight reproduces the probe's logits up to a per-class constant (the folded bias).
    offset = logits - x @ res.weight[0].T
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), atol=1e-4, rtol=0)
    steer = res.weight[0, 1] - res.weight[0, 0]
    torch.testing.assert_close(res.direction[0], steer / steer.norm())


def test_batched_equals_separate_and_chunking(token_grid):
    acts, labels = token_grid
    x = acts[:, 2]  # [3 layers, n, d]
    batched = train_probes(x, labels, epochs=40, seed=2)
    for g in range(3):
        alone = train_probes(x[g], labels, epochs=40, seed=2)
        torch.testing.assert_close(alone.weight[0], batched.weight[g], atol=1e-5, rtol=1e-4)
        assert alone.test_accuracy.item() == batched.test_accuracy[g].item()
    sites = {(layer, 2): acts[layer, 2] for layer in range(3)}
    whole = probe_grid(sites, labels, epochs=40, seed=2).table
    chunked = probe_grid(sites, labels, epochs=40, seed=2, max_sites_per_fit=2).table
    assert whole[["layer", "position", "accuracy"]].equals(chunked[["layer", "position", "accuracy"]])


def test_deterministic_by_seed(token_grid):
    acts, labels = token_grid
    first = train_probes(acts[1, 3], labels, epochs=30, batch_size=64, seed=5)
    again = train_probes(acts[1, 3], labels, epochs=30, batch_size=64, seed=5)
    for (name, a), (_, b) in zip(first.module.state_dict().items(), again.module.state_dict().items()):
        assert torch.equal(a, b), name
    other = train_probes(acts[1, 3], labels, epochs=30, batch_size=64, seed=6)
    assert not torch.equal(first.weight, other.weight)


def test_mlp_probe_learns_xor_linear_cannot():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=gen)
    labels = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    linear = train_probes(x, labels, epochs=150, lr=0.05, seed=0)
    mlp = train_probes(x, labels, hidden=32, epochs=150, lr=0.05, seed=0)
    assert linear.test_accuracy.item() < 0.7
    assert mlp.test_accuracy.item() > 0.9 and mlp.ci_low.item() > linear.ci_high.item()
    assert mlp.weight is None and mlp.direction is None


def test_bad_input():
    x, labels = torch.randn(20, 4), torch.tensor([0, 1] * 10)
    with pytest.raises(ValueError, match="labels must be \\[n\\] with n = 20"):
        train_probes(x, labels[:10])
    with pytest.raises(ValueError, match="at least two classes"):
        train_probes(x, torch.zeros(20))
    with pytest.raises(ValueError, match="activations must be"):
        train_probes(torch.randn(20), labels)
    with pytest.raises(ValueError, match="epochs >= 1"):
        train_probes(x, labels, epochs=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        train_probes(x, labels, batch_size=0)
    with pytest.raises(ValueError, match="layers, positions, n, d"):
        probe_grid(torch.randn(2, 20, 4), labels)
