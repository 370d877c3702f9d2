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


@torch.no_grad()
def sublayer_ranks(model, input_ids: Tensor, token_ids: Sequence[int], position: int = -1) -> dict[str, Tensor]:
    """Where given tokens rank when each layer's attention and MLP output at ``position`` is read
    through the final norm and the unembedding (the logit lens on the sublayer outputs themselves,
    ``logit_lens(site="attn_out" / "mlp_out", normalize="self")``), from one forward pass.

    Returns ``{"attn_out": ranks, "mlp_out": ranks}`` (``[n_layers, len(token_ids)]``, 0 = the top
    token; a token's rank is the number of tokens with a strictly higher logit) and
    ``{"attn_out_top": ids, "mlp_out_top": ids}`` (``[n_layers]``, each layer's top token).
    """
    adapter = get_adapter(model)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise EngineError(f"input_ids must be [1, length], got {tuple(input_ids.shape)}")
    pos = check_positions([position], input_ids.shape[1])[0]
    tokens = torch.as_tensor(list(token_ids), dtype=torch.long)
    vocab = unembed_weight(adapter).shape[0]
    if tokens.numel() and not bool(((tokens >= 0) & (tokens < vocab)).all()):
        raise EngineError(f"token ids must be in 0..{vocab - 1}, got {tokens.tolist()}")
    kinds = ("attn_out", "mlp_out")
    sites = [Site(kind, layer, (pos,)) for kind in kinds for layer in range(adapter.n_layers)]
    with capture(model, sites) as acts:
        model(input_ids=input_ids)
    out = {}
    for kind in kinds:
        logits = torch.stack([read_out(adapter, acts[f"{kind}.{layer}"][0, 0], None, "self")
                              for layer in range(adapter.n_layers)])  # [n_layers, vocab]
        chosen = logits[:, tokens.to(logits.device)]                    # [n_layers, n_tokens]
        out[kind] = (logits[:, None, :] > chosen[:, :, None]).sum(-1)
        out[f"{kind}_top"] = logits.argmax(-1)
    return out


def read_out(adapter, x: Tensor, final_resid: Tensor, normalize: str) -> Tensor:
    """Vocabulary logits of vectors ``x`` (model space), see the module docstring."""
    if normalize == "self":
        return adapter.logits(x)
    weight = unembed_weight(adapter)
    return adapter.linear_final_norm(x, final_resid).to(weight.dtype) @ weight.t()
