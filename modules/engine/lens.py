"""Logit lens on the residual stream, on sublayer outputs and on per-head outputs, and the per-head
lens of Dutta et al. 2024 (:func:`head_lens`).

``normalize="self"`` applies the model's final norm to the activation itself (the classic logit
lens). ``normalize="final"`` freezes the final norm's scale at the real final residual and drops
its bias (direct logit attribution): the embedding, every attention and MLP output, and so every
head, then add up to the final logits (minus the norm's bias term).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import RESID_KINDS, Site, capture, check_positions
from modules.engine.metrics import target_prob

LENS_SITES = RESID_KINDS + ("head_out",)


def unembed_weight(adapter) -> Tensor:
    return adapter.unembed.weight  # [vocab, d_model]


@torch.no_grad()
def logit_lens(model, input_ids: Tensor, site: str = "resid_post", *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = (-1,), attention_mask: Tensor | None = None,
               normalize: str | None = None) -> Tensor:
    """Logits read off ``site`` at each layer: ``[n_layers, batch, n_positions, (n_heads,) vocab]``.

    ``normalize`` defaults to ``"self"`` for the residual stream and ``"final"`` for attn_out,
    mlp_out and head_out (see the module docstring). ``positions=None`` reads every position.
    """
    adapter = get_adapter(model)
    if site not in LENS_SITES:
        raise EngineError(f"logit lens site must be one of {', '.join(LENS_SITES)}, got {site!r}")
    normalize = normalize or ("self" if site in ("resid_pre", "resid_post") else "final")
    if normalize not in ("self", "final"):
        raise EngineError(f"normalize must be 'self' or 'final', got {normalize!r}")
    seq = input_ids.shape[-1]
    positions = list(range(seq)) if positions is None else check_positions(list(positions), seq)
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(l) for l in layers]
    last = Site("resid_post", adapter.n_layers - 1)
    sites = [Site(site, layer) for layer in layers]
    with capture(model, sites + ([last] if last not in sites else [])) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask)
    final = acts[last][:, positions]
    out = []
    for layer in layers:
        x = acts[Site(site, layer)][:, positions]
        if site == "head_out":
            x = adapter.head_results(layer, x)  # [batch, pos, heads, d_model]
        out.append(read_out(adapter, x, final[:, :, None] if site == "head_out" else final, normalize))
    return torch.stack(out)


class HeadLens(NamedTuple):
    """Probability of the target read off the residual stream with and without the other heads."""
    p_mid: Tensor   # [layers, n]: lens of resid_pre + the whole attention output
    p_head: Tensor  # [layers, heads, n]: lens of resid_pre + one head's contribution

    def score(self) -> Tensor:
        """``(p_mid - p_head) / p_mid`` ``[layers, heads, n]``: the share of the target's probability
        after attention that is lost when only this head writes (near 0: the head carries it)."""
        return (self.p_mid[:, None] - self.p_head) / self.p_mid[:, None]


@torch.no_grad()
def head_lens(model, input_ids: Tensor, target: int | Tensor, *, position: int = -1,
              attention_mask: Tensor | None = None, layers: Sequence[int] | None = None) -> HeadLens:
    """Per-head logit lens at one position (Dutta et al. 2024), per example ``n``.

    ``p_mid[layer, n]`` is the probability of ``target`` (an id, or one per example) under the
    model's final norm and unembedding (``Adapter.logits``, soft-cap included) of resid_mid =
    resid_pre + the attention block's output; ``p_head[layer, head, n]`` the same of resid_pre +
    that head's contribution alone (``Adapter.head_contributions``: its projected output plus the
    projection's bias; under Gemma's post-attention norm, that norm with its scale frozen at the
    whole attention output, so that the heads' parts add up to the real attention output). The
    final norm is applied to each sum, not to the parts.
    """
    adapter = get_adapter(model)
    pos = check_positions([position], input_ids.shape[-1])[0]
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(l) for l in layers]
    sites = [Site(kind, layer, positions=(pos,)) for layer in layers for kind in ("resid_pre", "attn_out", "head_out")]
    with capture(model, sites) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask)
    p_mid, p_head = [], []
    for layer in layers:
        resid = acts[f"resid_pre.{layer}"][:, 0]  # [n, d_model]
        p_mid.append(target_prob(adapter.logits(resid + acts[f"attn_out.{layer}"][:, 0]), target))
        heads = adapter.head_contributions(layer, acts[f"head_out.{layer}"][:, 0])  # [n, heads, d_model]
        p_head.append(target_prob(adapter.logits(resid[:, None] + heads).transpose(0, 1), target))
    return HeadLens(torch.stack(p_mid), torch.stack(p_head))


def read_out(adapter, x: Tensor, final_resid: Tensor, normalize: str) -> Tensor:
    """Vocabulary logits of vectors ``x`` (model space), see the module docstring."""
    if normalize == "self":
        return adapter.logits(x)
    weight = unembed_weight(adapter)
    return adapter.linear_final_norm(x, final_resid).to(weight.dtype) @ weight.t()
