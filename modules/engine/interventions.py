"""Ablation, steering and attention knockout, as context managers over the site hooks."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import Site, as_site, capture, install_mask_hook, intervene

ABLATIONS = ("zero", "mean", "resample")


@contextmanager
def ablate(model, site: Site | str, method: str = "zero", *, reference_ids: Tensor | None = None,
           reference_mask: Tensor | None = None, seed: int = 0, positions=None, heads=None) -> Iterator[None]:
    """Replace a site's selection with zeros, its mean over a reference set, or (``resample``) the
    activation of a reference example drawn per target example (seeded).

    Mean and resample read the same selection from ``reference_ids``, so reference prompts must
    have the target's length wherever positions matter.
    """
    adapter = get_adapter(model)
    site = as_site(site, adapter, positions=positions, heads=heads)
    if method not in ABLATIONS:
        raise EngineError(f"ablation method must be one of {', '.join(ABLATIONS)}, got {method!r}")
    if method == "zero":
        fn = torch.zeros_like
    else:
        if reference_ids is None:
            raise EngineError(f"{method} ablation needs reference_ids")
        with torch.no_grad(), capture(model, [site]) as acts:
            model(input_ids=reference_ids, attention_mask=reference_mask)
        reference = acts[site]
        if method == "mean":
            mean = reference.mean(dim=0, keepdim=True)
            fn = lambda act: mean  # noqa: E731
        else:
            generator = torch.Generator().manual_seed(seed)

            def fn(act):
                draw = torch.randint(len(reference), (act.shape[0],), generator=generator)
                return reference[draw.to(reference.device)]
    with intervene(model, {site: fn}):
        yield


@contextmanager
def steer(model, site: Site | str, direction: Tensor, scale: float = 1.0, *, positions=None,
          heads=None) -> Iterator[None]:
    """Add ``scale * direction`` to a site's selection (the direction broadcasts on the last axes)."""
    site = as_site(site, get_adapter(model), positions=positions, heads=heads)
    direction = torch.as_tensor(direction)

    def fn(act):
        if direction.shape[-1] != act.shape[-1]:
            raise EngineError(f"steering direction has size {direction.shape[-1]} on its last axis but "
                              f"{site.key} has {act.shape[-1]}")
        return act + scale * direction.to(device=act.device, dtype=act.dtype)
    with intervene(model, {site: fn}):
        yield


def _blocked(edges, q_len: int, kv_len: int, device) -> Tensor:
    """[batch or 1, q_len, kv_len] True where query (absolute position kv_len - q_len + i) may not
    attend to key j."""
    offset = kv_len - q_len
    if isinstance(edges, Tensor):
        if edges.dtype != torch.bool or edges.ndim not in (2, 3) or edges.shape[-1] < kv_len \
                or edges.shape[-2] < kv_len:
            raise EngineError(f"knockout edges tensor must be boolean [seq, seq] or [batch, seq, seq] "
                              f"covering {kv_len} positions, got {tuple(edges.shape)} {edges.dtype}")
        blocked = edges[..., offset:kv_len, :kv_len].to(device)
        return blocked if blocked.ndim == 3 else blocked[None]
    blocked = torch.zeros(1, q_len, kv_len, dtype=torch.bool, device=device)
    for q, k in edges:
        for name, value in (("query", q), ("key", k)):
            if not -kv_len <= value < kv_len:
                raise EngineError(f"knockout {name} position {value} out of range for a sequence of "
                                  f"length {kv_len} (allowed {-kv_len}..{kv_len - 1})")
        q, k = q % kv_len, k % kv_len
        if q >= offset:
            blocked[0, q - offset, k] = True
    return blocked


@contextmanager
def knockout(model, layers: Iterable[int], edges, heads: Iterable[int] | None = None) -> Iterator[None]:
    """Attention knockout: in ``layers`` (and ``heads``, default all), query position q may not
    attend to key position k, for each ``(q, k)`` in ``edges`` (or where a boolean
    [seq, seq] / [batch, seq, seq] tensor is True). Works with eager and SDPA attention."""
    adapter = get_adapter(model)
    layers = [adapter.check_layer(layer) for layer in layers]
    heads = None if heads is None else [adapter.check_head(head) for head in heads]
    if not isinstance(edges, Tensor):
        edges = [(int(q), int(k)) for q, k in edges]

    def edit(mask: Tensor, q_len: int, kv_len: int) -> Tensor:
        blocked = _blocked(edges, q_len, kv_len, mask.device)[:, None]  # [b, 1, q, kv]
        if heads is not None:
            per_head = torch.zeros(1, adapter.n_heads, 1, 1, dtype=torch.bool, device=mask.device)
            per_head[:, heads] = True
            blocked = blocked & per_head
        shape = torch.broadcast_shapes(mask.shape, blocked.shape)
        if mask.dtype == torch.bool:
            new = mask.expand(shape) & ~blocked
            before, after = mask, new
        else:
            floor = torch.finfo(mask.dtype).min
            new = mask.expand(shape).masked_fill(blocked, floor)
            before, after = mask > floor / 2, new > floor / 2
        if bool((before.any(-1) & ~after.any(-1)).any()):
            raise EngineError("knockout leaves a query position with no key to attend to")
        return new

    with ExitStack() as stack:
        for layer in layers:
            install_mask_hook(adapter, layer, edit, stack)
        yield
