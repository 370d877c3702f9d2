import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from modules.engine.metrics import (accuracy_ci, at_position, kl_to_clean, logit_diff, mean_with_ci,
                                    normalized_effect, target_prob, target_rank, wilson_ci)


@pytest.fixture
def logits():
    return torch.randn(6, 5, 11, generator=torch.Generator().manual_seed(0))


def test_logit_diff_matches_loop(logits):
    correct, incorrect = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 0, 7, 7, 10, 9])
    got = logit_diff(logits, correct, incorrect, position=-1)
    want = [logits[i, -1, correct[i]] - logits[i, -1, incorrect[i]] for i in range(6)]
    torch.testing.assert_close(got, torch.stack(want))
    # Per-example positions (right-padded prompts) and a leading sweep axis broadcast.
    pos = torch.tensor([0, 1, 2, 3, 4, 4])
    got = logit_diff(at_position(logits, pos), 3, 4)
    torch.testing.assert_close(got, torch.stack([logits[i, pos[i], 3] - logits[i, pos[i], 4] for i in range(6)]))
    sweep = torch.stack([logits[:, -1], 2 * logits[:, -1]])  # [cells, n, vocab]
    torch.testing.assert_close(logit_diff(sweep, correct, incorrect), torch.stack([want_i := torch.stack(want), 2 * want_i]))


def test_prob_and_rank_match_scipy(logits):
    target = torch.tensor([0, 3, 5, 7, 9, 10])
    last = logits[:, -1].double().numpy()
    probs = scipy.special.softmax(last, axis=-1)
    np.testing.assert_allclose(target_prob(logits, target, position=-1).numpy(),
                               probs[np.arange(6), target.numpy()], rtol=1e-5)
    # rank 0 = top; scipy ranks descending with 'min' so rank = #strictly larger.
    want_rank = scipy.stats.rankdata(-last, axis=-1, method="min")[np.arange(6), target.numpy()] - 1
    np.testing.assert_array_equal(target_rank(logits, target, position=-1).numpy(), want_rank)
    top = logits[:, -1].argmax(-1)
    assert (target_rank(logits, top, position=-1) == 0).all()


def test_kl_matches_scipy(logits):
    clean = logits[:, -1]
    patched = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    got = kl_to_clean(patched, clean)
    p = scipy.special.softmax(clean.double().numpy(), -1)
    q = scipy.special.softmax(patched.double().numpy(), -1)
    np.testing.assert_allclose(got.numpy(), scipy.stats.entropy(p, q, axis=-1), rtol=1e-5)
    assert torch.equal(kl_to_clean(clean, clean), torch.zeros(6))
    assert kl_to_clean(logits, logits, position=2).abs().max() == 0


def test_normalized_effect_and_degenerate():
    clean, corrupt = torch.tensor([2.0, 4.0, 1.0]), torch.tensor([0.0, 2.0, -1.0])
    patched = torch.tensor([[2.0, 2.0, 0.0], [1.0, 3.0, 1.0]])  # [cells, n]
    torch.testing.assert_close(normalized_effect(patched, clean, corrupt),
                               torch.tensor([[1.0, 0.0, 0.5], [0.5, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="clean == corrupt.*on_degenerate='nan'"):
        normalized_effect(patched, torch.tensor([2.0, 2.0, 1.0]), corrupt)
    out = normalized_effect(patched, torch.tensor([2.0, 2.0, 1.0]), corrupt, on_degenerate="nan")
    assert out[:, 1].isnan().all() and not out[:, [0, 2]].isnan().any()
    with pytest.raises(ValueError, match="on_degenerate"):
        normalized_effect(patched, clean, corrupt, on_degenerate="zero")


def test_bad_position_and_token(logits):
    with pytest.raises(ValueError, match="position 5 out of range"):
        logit_diff(logits, 0, 1, position=5)
    with pytest.raises(ValueError, match="token id out of range"):
        target_prob(logits, 11, position=0)


def test_mean_with_ci_matches_manual_bootstrap():
    values = torch.randn(40, 3, 4, generator=torch.Generator().manual_seed(2)) + 1.0
    ci = mean_with_ci(values, n_boot=500, seed=7)
    assert ci.mean.shape == ci.low.shape == ci.high.shape == (3, 4)
    torch.testing.assert_close(ci.mean, values.double().mean(0))
    # Independent loop over the same resamples (multinomial counts from the same seed).
    counts = np.random.default_rng(7).multinomial(40, np.full(40, 1 / 40), size=500)
    x = values.double().numpy()
    boots = np.stack([np.repeat(x, c, axis=0).mean(0) for c in counts])
    np.testing.assert_allclose(ci.low.numpy(), np.percentile(boots, 2.5, axis=0), rtol=1e-10)
    np.testing.assert_allclose(ci.high.numpy(), np.percentile(boots, 97.5, axis=0), rtol=1e-10)
    # Sanity: CI contains the mean, shrinks with more data, is close to the normal-theory width.
    assert (ci.low <= ci.mean).all() and (ci.mean <= ci.high).all()
    big = torch.randn(4000, generator=torch.Generator().manual_seed(3))
    small_ci, big_ci = mean_with_ci(big[:40], seed=0), mean_with_ci(big, seed=0)
    assert big_ci.high - big_ci.low < (small_ci.high - small_ci.low) / 4
    assert abs((big_ci.high - big_ci.low) - 2 * 1.96 / np.sqrt(4000)) < 0.01
    # Deterministic by seed, and a different seed changes the interval.
    again = mean_with_ci(values, n_boot=500, seed=7)
    assert torch.equal(again.low, ci.low) and torch.equal(again.high, ci.high)
    assert not torch.equal(mean_with_ci(values, n_boot=500, seed=8).low, ci.low)


def test_mean_with_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        mean_with_ci(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="alpha"):
        mean_with_ci(torch.ones(3), alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        mean_with_ci(torch.ones(3), n_boot=0)
    with pytest.raises(ValueError, match="leading example axis"):
        mean_with_ci(torch.tensor(1.0))


def test_wilson_matches_scipy():
    for k, n in [(0, 10), (7, 10), (10, 10), (123, 200)]:
        ci = wilson_ci(k, n)
        ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert ci.mean.item() == pytest.approx(k / n)
        assert ci.low.item() == pytest.approx(ref.low, abs=1e-12)
        assert ci.high.item() == pytest.approx(ref.high, abs=1e-12)
    correct = torch.rand(300, 4, generator=torch.Generator().manual_seed(4)) < torch.tensor([0.1, 0.5, 0.9, 1.0])
    acc = accuracy_ci(correct)
    torch.testing.assert_close(acc.mean, correct.double().mean(0))
    assert (acc.low <= acc.mean).all() and (acc.mean <= acc.high).all() and acc.high[3] == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_ci(11, 10)
