"""How information moves between positions through attention heads: per-head copy scores, and the
backward information-flow trace of Dutta et al. 2024 (§3.7), for any supported model.

A head's *contribution* is what it alone adds to the residual stream
(``Adapter.head_contributions``: its projected output plus the output projection's bias; under
Gemma's post-attention norm, that norm with its scale frozen at the whole attention output).
Both analyses run the model once and work on the captured activations.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import Site, capture, check_positions
from modules.engine.lens import unembed_weight


class CopyScores(NamedTuple):
    """Per head and example, ``[layers, heads, n]``."""
    attention: Tensor   # attention weight from the query position to the example's source position
    projection: Tensor  # <head contribution at the query position, unembedding row of the target>
    score: Tensor       # attention * projection


class FlowNode(NamedTuple):
    """One step of the backward trace: head (layer, head) at query_position attends to key_position,
    where the residual stream entering the head's layer reads as ``token``."""
    depth: int
    layer: int
    head: int
    query_position: int
    key_position: int
    token: int          # the token id the head passes (read at key_position), traced further down
    parent: int         # index of the parent node in the returned list, -1 at depth 0
    in_context: bool    # the token id occurs in the prompt


class ContextShare(NamedTuple):
    """Per layer, ``[n_layers]``: nodes whose head is in that layer, and the share of them that pass
    a token occurring in the prompt (NaN where a layer has no node)."""
    counts: Tensor
    shares: Tensor


def _integers(values, name: str) -> Tensor:
    """A flat long tensor; 2.5 or True is refused rather than truncated."""
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise EngineError(f"{name} must be integers, got {values.tolist()!r}")
    return values.long().reshape(-1).cpu()


def _token_ids(token, vocab: int, n: int, name: str = "target") -> Tensor:
    ids = _integers(token, name)
    if ids.numel() not in (1, n):
        raise EngineError(f"{name} must be one id or one per example ({n}), got {ids.numel()}")
    if ((ids < 0) | (ids >= vocab)).any():
        raise EngineError(f"{name} id out of range for a vocabulary of {vocab} (allowed 0..{vocab - 1})")
    return ids.expand(n)


@torch.no_grad()
def copy_scores(model, input_ids: Tensor, source_positions: int | Sequence[int] | Tensor, target: int | Tensor, *,
                position: int = -1, attention_mask: Tensor | None = None) -> CopyScores:
    """How strongly each head copies the target from its source position to ``position``.

    ``attention[l, h, n]``: head (l, h)'s attention weight from ``position`` to
    ``source_positions[n]`` (one position for every example, or one each); ``projection[l, h, n]``:
    ``<contribution of (l, h) at position, W_U[target[n]]>``, the direct push of the head's output
    towards the target's logit before the final norm; ``score``: their product (high when the head
    both reads the source and writes the target).
    """
    adapter = get_adapter(model)
    n, seq = input_ids.shape
    pos = check_positions([position], seq)[0]
    sources = check_positions(_integers(source_positions, "source_positions").tolist(), seq)
    if len(sources) not in (1, n):
        raise EngineError(f"source_positions must be one position or one per example ({n}), got {len(sources)}")
    sources = torch.tensor(sources).expand(n)
    unembed = unembed_weight(adapter)
    rows = unembed[_token_ids(target, unembed.shape[0], n).to(unembed.device)]  # [n, d_model]
    layers = range(adapter.n_layers)
    with capture(model, [Site(kind, layer, positions=(pos,)) for layer in layers
                         for kind in ("pattern", "head_out")]) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask)
    attention, projection = [], []
    for layer in layers:
        pattern = acts[f"pattern.{layer}"][:, :, 0]  # [n, heads, key]
        attention.append(pattern[torch.arange(n, device=pattern.device), :, sources.to(pattern.device)].t())
        heads = adapter.head_contributions(layer, acts[f"head_out.{layer}"][:, 0])  # [n, heads, d_model]
        projection.append(torch.einsum("nhd,nd->hn", heads.float(), rows.float().to(heads.device)))
    attention, projection = torch.stack(attention).float(), torch.stack(projection)
    return CopyScores(attention, projection, attention * projection.to(attention.device))


def _check_heads(adapter, heads: Iterable[tuple[int, int]] | None) -> Tensor:
    """[n_layers, n_heads] mask of the heads a trace may use."""
    allowed = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.bool)
    if heads is None:
        return allowed.logical_not()
    for item in heads:
        if not isinstance(item, Sequence) or len(item) != 2:
            raise EngineError(f"heads must be (layer, head) pairs, got {item!r}")
        allowed[adapter.check_layer(item[0]), adapter.check_head(item[1])] = True
    return allowed


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EngineError(f"{name} must be a positive integer, got {value!r}")
    return value


def _above_median(values: Tensor, k: int) -> Tensor:
    """Indices of the (at most) ``k`` largest values strictly above the median, largest first."""
    values = values.float()
    candidates = (values > values.quantile(0.5)).nonzero()[:, 0]
    return candidates[values[candidates].argsort(descending=True, stable=True)[:k]]


@torch.no_grad()
def trace_flow(model, input_ids: Tensor, token: int, *, position: int = -1, top_heads: int = 4,
               top_positions: int = 1, top_tokens: int = 1, heads: Iterable[tuple[int, int]] | None = None,
               attention_mask: Tensor | None = None) -> list[FlowNode]:
    """Backward information-flow trace of one prompt (Dutta et al. 2024, §3.7), breadth first.

    From (``position``, ``token``, below layer L): (I) among the heads of layers below, restricted
    to ``heads`` if given, keep the ``top_heads`` whose own contribution at the query position gives
    ``token`` the highest probability under the logit lens (final norm + unembedding, alone, without
    the residual stream); (II) in each kept head's attention row at the query position, keep the
    ``top_positions`` key positions whose weight is strictly above the row's median over the keys it
    may attend to (causal, not padding); (III) read resid_pre of that head's layer at each key
    position through the logit lens and keep the ``top_tokens`` tokens whose probability is strictly
    above the median over the vocabulary. Each (head, key position, token) is a node; the trace
    recurses from (key position, token) below the head's layer, with the three top-k's one smaller
    per depth (never below 1), and stops at layer 0. ``input_ids`` is ``[1, seq]``. The model runs
    once; every node is read off the captured activations.
    """
    adapter = get_adapter(model)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise EngineError(f"trace_flow traces one prompt: input_ids must be [1, seq], got {tuple(input_ids.shape)}")
    seq = input_ids.shape[1]
    start = check_positions([position], seq)[0]
    vocab = unembed_weight(adapter).shape[0]
    token = int(_token_ids(token, vocab, 1, "token")[0])
    tops = [_positive_int(name, value) for name, value in
            (("top_heads", top_heads), ("top_positions", top_positions), ("top_tokens", top_tokens))]
    allowed = _check_heads(adapter, heads)
    valid = torch.ones(seq, dtype=torch.bool) if attention_mask is None else attention_mask.reshape(-1).bool().cpu()
    in_prompt = set(input_ids[0][valid.to(input_ids.device)].tolist())
    sites = [Site(kind, layer) for layer in range(adapter.n_layers) for kind in ("resid_pre", "head_out", "pattern")]
    with capture(model, sites) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask)

    def contributions(query: int) -> Tensor:  # [layers, heads, d_model]
        return torch.stack([adapter.head_contributions(layer, acts[f"head_out.{layer}"][0, query])
                            for layer in range(adapter.n_layers)])

    normalisers: dict[int, Tensor] = {}  # query position -> log-sum-exp of every head's lens logits

    def head_probs(query: int, tok: int) -> Tensor:  # [layers, heads]: lens probability of tok
        parts = contributions(query)
        if query not in normalisers:  # full-vocabulary logits once per position, one layer at a time
            normalisers[query] = torch.stack([adapter.logits(part).float().logsumexp(-1) for part in parts])
        return (adapter.logits(parts, tokens=[tok])[..., 0].float() - normalisers[query]).exp().cpu()

    nodes: list[FlowNode] = []
    queue = deque([(start, token, adapter.n_layers, 0, -1)])
    while queue:
        query, tok, below, depth, parent = queue.popleft()
        n_heads, n_keys, n_tokens = (max(top - depth, 1) for top in tops)
        probs = head_probs(query, tok)[:below].masked_fill(~allowed[:below], -1.0).flatten()
        ranked = probs.argsort(descending=True, stable=True)[:n_heads]
        keys_allowed = (torch.arange(seq) <= query) & valid
        for flat in ranked[probs[ranked] >= 0].tolist():
            layer, head = divmod(flat, adapter.n_heads)
            row = acts[f"pattern.{layer}"][0, head, query].cpu()[keys_allowed]
            for key in keys_allowed.nonzero()[:, 0][_above_median(row, n_keys)].tolist():
                lens = adapter.logits(acts[f"resid_pre.{layer}"][0, key]).float().softmax(-1).cpu()
                for passed in _above_median(lens, n_tokens).tolist():
                    nodes.append(FlowNode(depth, layer, head, query, key, passed, parent, passed in in_prompt))
                    if layer > 0:
                        queue.append((key, passed, layer, depth + 1, len(nodes) - 1))
    return nodes


def context_share_by_layer(nodes: Sequence[FlowNode], n_layers: int) -> ContextShare:
    """Per layer, the number of trace nodes whose head is in it and the share of them passing an
    in-context token (Dutta et al.'s functional rift: early layers pass tokens from pretraining,
    later ones from the context)."""
    counts = torch.zeros(n_layers, dtype=torch.long)
    in_context = torch.zeros(n_layers, dtype=torch.long)
    for node in nodes:
        if not 0 <= node.layer < n_layers:
            raise EngineError(f"node layer {node.layer} out of range for {n_layers} layers (allowed 0..{n_layers - 1})")
        counts[node.layer] += 1
        in_context[node.layer] += bool(node.in_context)
    shares = torch.where(counts > 0, in_context / counts.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    return ContextShare(counts, shares.double())


def rift_layer(shares: Tensor | ContextShare, threshold: float = 0.5) -> int | None:
    """The lowest layer l whose in-context share is >= ``threshold`` and stays so: every layer from l
    up that has nodes (a non-NaN share) has a share >= ``threshold``, and l itself has nodes. None
    if there is no such layer (no nodes, or the highest layer with nodes is below the threshold)."""
    shares = shares.shares if isinstance(shares, ContextShare) else torch.as_tensor(shares, dtype=torch.float64)
    rift = None
    for layer in range(len(shares) - 1, -1, -1):  # from the top down, while the share holds
        share = float(shares[layer])
        if share != share:  # NaN: no nodes in this layer
            continue
        if share < threshold:
            break
        rift = layer
    return rift
