import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from modules.engine.metrics import (accuracy_ci, at_position, kl_recovery, kl_recovery_from_kl, kl_to_clean, logit_diff, mean_with_ci,
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


# --- normalised KL recovery -----------------------------------------------------------------------
def _kl(p_logits, q_logits):
    p = scipy.special.softmax(np.asarray(p_logits, dtype=np.float64), -1)
    q = scipy.special.softmax(np.asarray(q_logits, dtype=np.float64), -1)
    return scipy.stats.entropy(p, q, axis=-1)


def test_kl_recovery_sign_and_normalisation():
    clean = torch.tensor([[3.0, 0.0, -1.0, 0.5]])
    corrupt = torch.tensor([[0.0, 2.0, -1.0, 0.5]])
    worse = torch.tensor([[-3.0, 4.0, -1.0, 0.5]])  # further from the clean distribution than corrupt
    halfway = (clean + corrupt) / 2
    result = kl_recovery(clean, corrupt, torch.stack([clean, corrupt, worse, halfway]))  # [4 cells, 1, vocab]
    assert result.score.shape == (4,) and result.per_example.shape == (4, 1)
    assert result.score[0] == pytest.approx(1.0, abs=1e-12) and result.score[1] == pytest.approx(0.0, abs=1e-12)
    assert result.score[2] < 0 and 0 < result.score[3] < 1
    kl_pq, kl_pr = _kl(clean, corrupt)[0], _kl(clean, worse)[0]
    assert result.score[2].item() == pytest.approx((kl_pq - kl_pr) / kl_pq, rel=1e-9)
    torch.testing.assert_close(result.per_example[:, 0], result.score)  # one example: the same ratio
    assert result.kl_corrupt.item() == pytest.approx(kl_pq, rel=1e-9)


def test_kl_recovery_averages_over_examples_before_normalising():
    gen = torch.Generator().manual_seed(5)
    clean = torch.randn(3, 7, generator=gen)
    corrupt = clean + torch.tensor([0.3, 2.0, 5.0])[:, None] * torch.randn(3, 7, generator=gen)  # very unequal KLs
    patched = clean + 0.5 * (corrupt - clean) + 0.2 * torch.randn(3, 7, generator=gen)
    result = kl_recovery(clean, corrupt, patched)
    kl_pq, kl_pr = _kl(clean, corrupt), _kl(clean, patched)
    assert result.score.item() == pytest.approx((kl_pq.mean() - kl_pr.mean()) / kl_pq.mean(), rel=1e-9)
    np.testing.assert_allclose(result.per_example.numpy(), (kl_pq - kl_pr) / kl_pq, rtol=1e-9)
    assert abs(result.score.item() - result.per_example.mean().item()) > 1e-3  # not a mean of ratios


def test_kl_recovery_broadcasts_over_cells_and_bootstraps_examples():
    gen = torch.Generator().manual_seed(6)
    clean, corrupt = torch.randn(12, 9, generator=gen), torch.randn(12, 9, generator=gen)
    weights = torch.rand(2, 3, 1, 1, generator=gen)
    patched = weights * clean + (1 - weights) * corrupt + 0.1 * torch.randn(2, 3, 12, 9, generator=gen)
    result = kl_recovery(clean, corrupt, patched)
    assert result.score.shape == (2, 3) and result.per_example.shape == result.kl_patched.shape == (2, 3, 12)
    for i in range(2):
        for j in range(3):
            one = kl_recovery(clean, corrupt, patched[i, j])
            torch.testing.assert_close(result.score[i, j], one.score)
            torch.testing.assert_close(result.per_example[i, j], one.per_example)
    ci = result.ci(n_boot=200, seed=3)
    assert ci.mean.shape == ci.low.shape == (2, 3)
    torch.testing.assert_close(ci.mean, result.score)
    assert (ci.low <= ci.mean).all() and (ci.mean <= ci.high).all() and (ci.low < ci.high).all()
    # The same resamples of examples by hand: the ratio of the resampled mean KLs.
    counts = np.random.default_rng(3).multinomial(12, np.full(12, 1 / 12), size=200)
    kl_pq, kl_pr = result.kl_corrupt.numpy(), result.kl_patched[1, 2].numpy()
    boots = [(c @ kl_pq - c @ kl_pr) / (c @ kl_pq) for c in counts]
    assert ci.low[1, 2].item() == pytest.approx(np.percentile(boots, 2.5), rel=1e-9)
    assert ci.high[1, 2].item() == pytest.approx(np.percentile(boots, 97.5), rel=1e-9)


def test_kl_recovery_degenerate_and_shapes():
    clean = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    corrupt = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 1.0]])  # the first example is unchanged
    patched = torch.tensor([[0.5, 0.0, 0.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="clean == corrupt .*on_degenerate='nan'") as error:
        kl_recovery(clean, corrupt, patched)
    assert "\n" not in str(error.value)
    result = kl_recovery(clean, corrupt, patched, on_degenerate="nan")
    assert result.per_example[0].isnan() and result.per_example[1].isfinite() and result.score.isfinite()
    assert kl_recovery(clean, clean, patched, on_degenerate="nan").score.isnan()
    with pytest.raises(ValueError, match="clean and corrupt logits must both be"):
        kl_recovery(clean, corrupt[:1], patched)
    with pytest.raises(ValueError, match=r"patched logits must be \[\.\.\., n, vocab\] = \[\.\.\., 2, 3\]"):
        kl_recovery(clean, corrupt, patched[:1])


def test_kl_recovery_from_kls_equals_the_logits_version():
    g = torch.Generator().manual_seed(3)
    clean, corrupt = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    patched = torch.randn(2, 3, 5, 11, generator=g)
    full = kl_recovery(clean, corrupt, patched)
    from_kl = kl_recovery_from_kl(full.kl_corrupt, full.kl_patched)
    torch.testing.assert_close(from_kl.score, full.score)
    with pytest.raises(ValueError, match=r"kl_corrupt must be \[n\] and kl_patched \[..., n\]"):
        kl_recovery_from_kl(full.kl_corrupt, full.kl_patched[..., :4])
