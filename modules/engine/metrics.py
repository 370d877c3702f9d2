"""Per-example metrics for patching, ablation and lens runs, with bootstrap and Wilson CIs.

Every metric takes logits shaped ``[..., vocab]`` (already at the answer position) or,
with ``position=``, logits shaped ``[n, seq, vocab]`` from which one position per example
is picked. Token ids broadcast against the leading dims, so a sweep's logits
``[cells, n, vocab]`` give ``[cells, n]`` values in one call.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class MeanCI(NamedTuple):
    """A mean and its two-sided confidence interval, each shaped like one example."""
    mean: Tensor
    low: Tensor
    high: Tensor


def at_position(logits: Tensor, position: int | Tensor) -> Tensor:
    """Pick one position per example: ``[n, seq, vocab]`` -> ``[n, vocab]``.

    ``position`` is one int for every example, or a ``[n]`` tensor (right-padded prompts).
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [n, seq, vocab] to pick a position, got shape {tuple(logits.shape)}")
    n, seq, _ = logits.shape
    pos = torch.as_tensor(position, device=logits.device).long().expand(n)
    if ((pos < -seq) | (pos >= seq)).any():
        raise ValueError(f"position {position} out of range for sequence length {seq} (allowed -{seq}..{seq - 1})")
    return logits[torch.arange(n, device=logits.device), pos % seq]


def _select(logits: Tensor, position: int | Tensor | None) -> Tensor:
    return logits if position is None else at_position(logits, position)


def _gather(values: Tensor, token: int | Tensor) -> Tensor:
    vocab = values.shape[-1]
    token = torch.as_tensor(token, device=values.device).long()
    if ((token < 0) | (token >= vocab)).any():
        raise ValueError(f"token id out of range: allowed 0..{vocab - 1}")
    token = token.expand(values.shape[:-1])
    return values.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def logit_diff(logits: Tensor, correct: int | Tensor, incorrect: int | Tensor,
               position: int | Tensor | None = None) -> Tensor:
    """logit[correct] - logit[incorrect], per example."""
    logits = _select(logits, position)
    return _gather(logits, correct) - _gather(logits, incorrect)


def target_prob(logits: Tensor, target: int | Tensor, position: int | Tensor | None = None) -> Tensor:
    """Softmax probability of ``target``, per example."""
    return _gather(_select(logits, position).float().softmax(-1), target)


def target_rank(logits: Tensor, target: int | Tensor, position: int | Tensor | None = None) -> Tensor:
    """Rank of ``target`` (0 = top): the number of tokens with a strictly larger logit."""
    logits = _select(logits, position)
    return (logits > _gather(logits, target).unsqueeze(-1)).sum(-1)


def kl_to_clean(logits: Tensor, clean_logits: Tensor, position: int | Tensor | None = None) -> Tensor:
    """KL(clean || patched) in nats, per example: how far a patch moves the clean distribution.

    ``clean_logits`` broadcasts against ``logits`` (e.g. ``[n, vocab]`` against ``[cells, n, vocab]``).
    """
    log_p = _select(clean_logits, position).double().log_softmax(-1)
    log_q = _select(logits, position).double().log_softmax(-1)
    # xlogy-style: p * (log p - log q) with 0 * anything = 0 where p underflows.
    return torch.where(log_p.isneginf(), 0.0, log_p.exp() * (log_p - log_q)).sum(-1).to(logits.dtype)


def normalized_effect(patched: Tensor, clean: Tensor, corrupt: Tensor, on_degenerate: str = "raise",
                      atol: float = 1e-6) -> Tensor:
    """(patched - corrupt) / (clean - corrupt): 1 = patch restores clean, 0 = no effect.

    Where |clean - corrupt| <= atol the ratio is undefined (the corruption changed nothing):
    ``on_degenerate="raise"`` (default) raises, ``"nan"`` returns NaN for those entries so the
    caller can drop them explicitly. Inputs broadcast, e.g. ``[cells, n]`` against ``[n]``.
    """
    if on_degenerate not in ("raise", "nan"):
        raise ValueError(f"on_degenerate must be 'raise' or 'nan', got {on_degenerate!r}")
    denom = torch.as_tensor(clean) - torch.as_tensor(corrupt)
    degenerate = denom.abs() <= atol
    if degenerate.any() and on_degenerate == "raise":
        where = degenerate.nonzero().flatten().tolist()[:5]
        raise ValueError(f"normalized_effect: clean == corrupt (|diff| <= {atol}) for {int(degenerate.sum())} "
                         f"entries (first indices {where}); pass on_degenerate='nan' to mark them NaN")
    effect = (patched - corrupt) / torch.where(degenerate, torch.ones_like(denom), denom)
    return torch.where(degenerate, torch.full_like(effect, float("nan")), effect)


class KLRecovery(NamedTuple):
    """Normalised KL recovery of a patch (see :func:`kl_recovery`); ``...`` are the cell dims."""
    score: Tensor        # [...]: (mean_n KL(P||Q) - mean_n KL(P||R)) / mean_n KL(P||Q)
    per_example: Tensor  # [..., n]: (KL(P||Q) - KL(P||R)) / KL(P||Q)
    kl_corrupt: Tensor   # [n]: KL(P||Q), clean to corrupted
    kl_patched: Tensor   # [..., n]: KL(P||R), clean to patched

    def ci(self, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> MeanCI:
        """Bootstrap CI of ``score`` per cell: examples resampled jointly, the ratio of means
        recomputed on each resample (:func:`ratio_of_means_ci`)."""
        recovered = (self.kl_corrupt - self.kl_patched).movedim(-1, 0)  # [n, ...]
        return ratio_of_means_ci(recovered, self.kl_corrupt.reshape(-1, *[1] * (recovered.ndim - 1))
                                 .expand_as(recovered), n_boot, alpha, seed)


def kl_recovery(clean_logits: Tensor, corrupt_logits: Tensor, patched_logits: Tensor,
                on_degenerate: str = "raise", atol: float = 1e-6) -> KLRecovery:
    """How much of the clean next-token distribution a patch restores, in KL (Dutta et al. 2024).

    With P, Q, R the softmaxes of the clean, corrupted and patched logits at one position,
    ``score = (mean_n KL(P||Q) - mean_n KL(P||R)) / mean_n KL(P||Q)``: 1 = full recovery, 0 = none,
    below 0 = further from clean than the corrupted run. The KLs are averaged over examples before
    normalising, so examples whose corruption barely moved P do not dominate. ``clean_logits`` and
    ``corrupt_logits`` are ``[n, vocab]``; ``patched_logits`` is ``[..., n, vocab]`` with any leading
    cell dims (a sweep's ``[layers, heads, n, vocab]``). Where KL(P||Q) <= ``atol`` (the corruption
    changed nothing) a ratio is undefined: ``on_degenerate`` as in :func:`normalized_effect`.
    """
    if clean_logits.ndim != 2 or corrupt_logits.shape != clean_logits.shape:
        raise ValueError(f"clean and corrupt logits must both be [n, vocab], got {tuple(clean_logits.shape)} "
                         f"and {tuple(corrupt_logits.shape)}")
    if patched_logits.shape[-2:] != clean_logits.shape:
        raise ValueError(f"patched logits must be [..., n, vocab] = [..., {', '.join(map(str, clean_logits.shape))}], "
                         f"got {tuple(patched_logits.shape)}")
    return kl_recovery_from_kl(kl_to_clean(corrupt_logits.double(), clean_logits),
                               kl_to_clean(patched_logits.double(), clean_logits), on_degenerate, atol)


def kl_recovery_from_kl(kl_corrupt: Tensor, kl_patched: Tensor, on_degenerate: str = "raise",
                        atol: float = 1e-6) -> KLRecovery:
    """:func:`kl_recovery` from KL(P||Q) ``[n]`` and KL(P||R) ``[..., n]``, for sweeps that reduce
    each cell's logits to its KL as they go (a vocabulary per cell and example does not fit)."""
    if kl_patched.shape[-1:] != kl_corrupt.shape or kl_corrupt.ndim != 1:
        raise ValueError(f"kl_corrupt must be [n] and kl_patched [..., n], got {tuple(kl_corrupt.shape)} and "
                         f"{tuple(kl_patched.shape)}")
    kl_corrupt, kl_patched = kl_corrupt.double(), kl_patched.double()
    # KL(P||P) = 0 plays "clean", KL(P||Q) "corrupt": (KL_PR - KL_PQ) / (0 - KL_PQ) is the recovery.
    per_example = normalized_effect(kl_patched, torch.zeros_like(kl_corrupt), kl_corrupt, on_degenerate, atol)
    score = normalized_effect(kl_patched.mean(-1), torch.zeros(()), kl_corrupt.mean(), on_degenerate, atol)
    return KLRecovery(score, per_example, kl_corrupt, kl_patched)


def _as_examples(values: Tensor | np.ndarray, name: str = "values") -> np.ndarray:
    x = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a leading example axis with n >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf; drop degenerate examples before the bootstrap")
    return x


def _bootstrap_weights(n: int, n_boot: int, alpha: float, seed: int) -> np.ndarray:
    """``[n_boot, n]`` resampling weights (multinomial counts / n), one draw shared by all cells."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def _as_result(mean: np.ndarray, boot: np.ndarray, alpha: float, shape: tuple) -> MeanCI:
    low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)  # NaN: an undefined resample
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a).reshape(shape))  # noqa: E731
    return MeanCI(as_tensor(mean), as_tensor(low), as_tensor(high))


def mean_with_ci(values: Tensor | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> MeanCI:
    """Mean over the leading (example) axis with a percentile bootstrap CI.

    ``values`` is ``[n, ...]`` (e.g. ``[n, layers, positions]``); the result tensors are ``[...]``,
    float64. One set of ``n_boot`` resamples is shared by every cell, drawn from ``seed``:
    the same seed gives the same bytes. Resampling is a multinomial count matrix times the
    values, so memory is ``n_boot * (n + cells)`` rather than ``n_boot * n * cells``.
    """
    x = _as_examples(values)
    flat = x.reshape(x.shape[0], -1)
    boot = _bootstrap_weights(x.shape[0], n_boot, alpha, seed) @ flat
    return _as_result(flat.mean(0), boot, alpha, x.shape[1:])


def ratio_of_means_ci(numerator: Tensor | np.ndarray, denominator: Tensor | np.ndarray, n_boot: int = 1000,
                      alpha: float = 0.05, seed: int = 0) -> MeanCI:
    """mean(numerator) / mean(denominator) over the leading (example) axis, per cell, with a
    percentile bootstrap CI that resamples examples jointly (same draw as :func:`mean_with_ci`).

    Used for normalised patching effects and kept shares of a logit difference, where a mean of
    per-example ratios would be dominated by examples with a near-zero denominator.
    """
    num, den = _as_examples(numerator, "numerator"), _as_examples(denominator, "denominator")
    if num.shape != den.shape:
        raise ValueError(f"numerator {num.shape} and denominator {den.shape} must have the same shape")
    flat_num, flat_den = num.reshape(num.shape[0], -1), den.reshape(den.shape[0], -1)
    if (flat_den.mean(0) == 0).any():
        raise ValueError("ratio_of_means_ci: a cell's denominator has mean 0")
    weights = _bootstrap_weights(num.shape[0], n_boot, alpha, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (weights @ flat_num) / (weights @ flat_den)
    boot = np.where(np.isfinite(boot), boot, np.nan)
    return _as_result(flat_num.mean(0) / flat_den.mean(0), boot, alpha, num.shape[1:])


def wilson_ci(successes: int | Tensor, total: int | Tensor, alpha: float = 0.05) -> MeanCI:
    """Proportion with its Wilson score interval (good for accuracies near 0 or 1 and small n)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = torch.as_tensor(successes, dtype=torch.float64)
    n = torch.as_tensor(total, dtype=torch.float64)
    if (n < 1).any() or (k < 0).any() or (k > n).any():
        raise ValueError(f"need total >= 1 and 0 <= successes <= total, got successes={successes}, total={total}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 or k = n the bound is exactly 0 or 1; pin it against rounding.
    low = torch.where(k == 0, 0.0, (centre - half).clamp(0.0, 1.0))
    high = torch.where(k == n, 1.0, (centre + half).clamp(0.0, 1.0))
    return MeanCI(p, low, high)


def accuracy_ci(correct: Tensor, alpha: float = 0.05) -> MeanCI:
    """Accuracy over the leading axis of a boolean ``[n, ...]`` tensor, with Wilson CIs."""
    correct = torch.as_tensor(correct)
    if correct.ndim == 0 or correct.shape[0] < 1:
        raise ValueError(f"correct must have a leading example axis with n >= 1, got shape {tuple(correct.shape)}")
    return wilson_ci(correct.bool().sum(0), correct.shape[0], alpha)
