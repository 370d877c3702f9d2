"""Attribution patching: a first-order estimate of every cell's patching effect from two forward
passes and one backward pass, and exact confirmation of the strongest cells.

For a cell with activation a (target run) and a' (source run) the estimate of
``metric(patched) - metric(target)`` is ``sum((a' - a) * d metric / d a)``, the gradient taken in
the target run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError
from modules.engine.hooks import Site, capture
from modules.engine.patching import Cell, Metric, check_pair, patch_cells, sweep_grid, _logit_positions


def attribution_patch(model, target_ids: Tensor, source_ids: Tensor, site: str, metric: Metric, *,
                      layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                      heads: Sequence[int] | None = None, per_position: bool | None = None,
                      logit_positions=(-1,), attention_mask: Tensor | None = None,
                      source_attention_mask: Tensor | None = None) -> Tensor:
    """Estimated effects on the same grid as :func:`~modules.engine.patching.patch_sweep`:
    ``[n_layers, (n_positions,) (n_heads,) batch]``."""
    check_pair(target_ids, source_ids)
    seq = target_ids.shape[-1]
    grid = sweep_grid(model, site, seq, layers, positions, heads, per_position)
    logit_positions = _logit_positions(logit_positions, seq)
    sites = [Site(site, layer) for layer in grid.layers]
    with torch.no_grad(), capture(model, sites) as source:
        model(input_ids=source_ids, attention_mask=source_attention_mask)
    with torch.enable_grad():
        embeds = model.get_input_embeddings()(target_ids)
        if not embeds.requires_grad:  # frozen weights: differentiate from the embeddings on
            embeds = embeds.detach().requires_grad_()
        with capture(model, sites, detach=False) as target:
            logits = model(inputs_embeds=embeds, attention_mask=attention_mask).logits[:, logit_positions]
        values = metric(logits)
        grads = torch.autograd.grad(values.sum(), [target[s] for s in sites])
    out = []
    for s, grad in zip(sites, grads):
        effect = ((source[s] - target[s].detach()) * grad).sum(-1)  # [batch, pos(, heads)]
        if site == "pattern":
            effect = effect.transpose(1, 2)  # [batch, heads, query] -> [batch, query, heads]
        if grid.heads is not None:
            effect = effect[:, :, grid.heads]
        effect = effect[:, grid.positions]
        if not grid.per_position:
            effect = effect.sum(1)
        out.append(effect)
    return torch.stack(out).movedim(1, -1).detach()


@dataclass
class TopK:
    cells: list[Cell]
    grid_index: list[tuple[int, ...]]   # index of each cell in the sweep grid
    estimate: Tensor                    # [k, batch] attribution estimate
    exact: Tensor                       # [k, batch] exact metric(patched) - metric(target)


def confirm_top_k(model, target_ids: Tensor, source_ids: Tensor, site: str, metric: Metric, k: int = 10, *,
                  scores: Tensor | None = None, layers=None, positions=None, heads=None, per_position=None,
                  logit_positions=(-1,), attention_mask: Tensor | None = None,
                  source_attention_mask: Tensor | None = None, **patch_kwargs) -> TopK:
    """Screen the grid by attribution patching (or the given ``scores`` on the same grid), then
    patch the k cells with the largest mean absolute estimate exactly."""
    grid_args = dict(layers=layers, positions=positions, heads=heads, per_position=per_position)
    masks = dict(attention_mask=attention_mask, source_attention_mask=source_attention_mask)
    if scores is None:
        scores = attribution_patch(model, target_ids, source_ids, site, metric, logit_positions=logit_positions,
                                   **grid_args, **masks)
    grid = sweep_grid(model, site, target_ids.shape[-1], **grid_args)
    if list(scores.shape[:-1]) != grid.shape:
        raise EngineError(f"scores have grid shape {list(scores.shape[:-1])}, expected {grid.shape}")
    if not 1 <= k <= len(grid.cells):
        raise EngineError(f"k must be in 1..{len(grid.cells)}, got {k}")
    flat = scores.reshape(len(grid.cells), -1)
    top = flat.mean(-1).abs().topk(k).indices.tolist()
    cells = [grid.cells[i] for i in top]
    patched = patch_cells(model, target_ids, source_ids, site, cells, metric, logit_positions=logit_positions,
                          **masks, **patch_kwargs)
    with torch.no_grad():
        logits = model(input_ids=target_ids, attention_mask=attention_mask).logits
        baseline = metric(logits[:, _logit_positions(logit_positions, target_ids.shape[-1])])
    index = [tuple(int(x) for x in torch.unravel_index(torch.tensor(i), tuple(grid.shape))) for i in top]
    return TopK(cells, index, flat[top], patched - baseline)
