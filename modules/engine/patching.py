"""Activation-patching sweeps: one generic engine, thin named wrappers (as in TransformerLens).

A cell patches the source run's activation at one site (a layer; positions; a head) into the
target run. ``method="restart"`` (default) is the fast path:

* restart at the patched layer from the target's recorded residual stream (blocks below it are
  never recomputed);
* recompute only positions from the first patched one on, with the earlier positions' keys and
  values taken from the record (shared-prefix reuse);
* batch many cells into one pass: cells that share a first position run together, each joining
  the batch at its own layer, and the patches are written with index tensors;
* patch only what can change: where source and target prompts share a prefix (a minimal pair),
  a causal model computes the same activations there in both runs, so patches at those positions
  write values over themselves. They are dropped; a cell left with none is the target's own result
  and runs nothing, and a head sweep over all positions recomputes only from the first difference.

``method="naive"`` runs one full hooked forward pass per cell: the reference and the baseline.

``metric(logits) -> [batch]`` receives one cell's logits ``[batch, len(logit_positions), vocab]``
(by default only the last position, where patching metrics are read); without a metric the
sweep returns those logits. Results carry a trailing batch axis so that confidence intervals
can be taken over examples.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import (HEAD_KINDS, RESID_KINDS, SITE_KINDS, Site, capture,
                                  check_positions, install_raw, intervene, selection_index)
from modules.engine.runner import Runner

Metric = Callable[[Tensor], Tensor]
# sites whose patches in the last block cannot change the keys and values it computes
SUFFIX_SAFE = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "pattern")


@dataclass(frozen=True)
class Cell:
    layer: int
    positions: tuple[int, ...] | None = None   # None: all positions
    head: int | None = None                    # None: all heads (head sites, pattern) or no heads


def check_pair(target_ids: Tensor, source_ids: Tensor) -> None:
    if target_ids.ndim != 2 or source_ids.ndim != 2:
        raise EngineError(f"token tensors must be [batch, seq], got {tuple(target_ids.shape)} and "
                          f"{tuple(source_ids.shape)}")
    if target_ids.shape != source_ids.shape:
        raise EngineError(f"source_ids has shape {tuple(source_ids.shape)} but target_ids has "
                          f"{tuple(target_ids.shape)}; patching needs prompts of equal length and count")


def _logit_positions(logit_positions, seq: int) -> list[int]:
    if logit_positions is None:
        return list(range(seq))
    return check_positions([int(p) for p in (logit_positions if isinstance(logit_positions, Iterable)
                                                else [logit_positions])], seq)


def _cells(kind: str, cells: Iterable, adapter, seq: int) -> list[Cell]:
    out = []
    for cell in cells:
        cell = cell if isinstance(cell, Cell) else Cell(*cell)
        adapter.check_layer(cell.layer)
        positions = None if cell.positions is None else tuple(check_positions(
            [cell.positions] if isinstance(cell.positions, int) else cell.positions, seq))
        if cell.head is not None:
            if kind in RESID_KINDS:
                raise EngineError(f"site {kind} has no heads; heads apply to {', '.join(HEAD_KINDS)}, pattern")
            adapter.check_head(cell.head, kind)
        out.append(Cell(int(cell.layer), positions, cell.head))
    if not out:
        raise EngineError("a sweep needs at least one cell")
    return out


def _apply_metric(metric: Metric | None, logits: Tensor, n_cells: int, batch: int) -> Tensor:
    logits = logits.reshape(n_cells, batch, *logits.shape[1:])
    if metric is None:
        return logits
    values = [torch.as_tensor(metric(cell_logits)) for cell_logits in logits]
    if values[0].shape[:1] != (batch,):
        raise EngineError(f"metric must return one value per example (shape [{batch}, ...]), "
                          f"got shape {tuple(values[0].shape)}")
    return torch.stack(values)


@torch.no_grad()
def patch_cells(model, target_ids: Tensor, source_ids: Tensor, site: str, cells: Sequence,
                metric: Metric | None = None, *, logit_positions=(-1,), attention_mask: Tensor | None = None,
                source_attention_mask: Tensor | None = None, method: str = "restart",
                max_rows: int = 512, call_cost: float | None = None, progress: bool = False) -> Tensor:
    """Patch each cell's source activation into the target run: ``[n_cells, batch, ...]``.

    ``site`` is a kind (``resid_pre``, ``head_out``, ...); each cell is a :class:`Cell` or a
    ``(layer, positions, head)`` tuple. ``max_rows`` bounds the batch of one restart pass
    (cells x prompts); ``call_cost`` is the fixed cost of a block call in positions, which
    decides when neighbouring first positions share a pass (default: :func:`default_call_cost`).
    """
    adapter = get_adapter(model)
    if site not in SITE_KINDS:
        raise EngineError(f"unknown site {site!r}; sites are {', '.join(SITE_KINDS)}")
    if method not in ("restart", "naive"):
        raise EngineError(f"method must be 'restart' or 'naive', got {method!r}")
    check_pair(target_ids, source_ids)
    batch, seq = target_ids.shape
    if max_rows < batch:
        raise EngineError(f"max_rows ({max_rows}) must be at least the batch size ({batch})")
    cells = _cells(site, cells, adapter, seq)
    positions = _logit_positions(logit_positions, seq)
    layers = sorted({cell.layer for cell in cells})
    with capture(model, [Site(site, layer) for layer in layers]) as source:
        model(input_ids=source_ids, attention_mask=source_attention_mask)
    if method == "naive":
        return _naive(model, target_ids, attention_mask, site, cells, source, metric, positions, progress)
    shared = shared_prefix(target_ids, source_ids, attention_mask, source_attention_mask)
    return _restart(model, target_ids, attention_mask, site, _narrow(cells, shared, seq), source, metric,
                    positions, max_rows, progress, call_cost)


def shared_prefix(target_ids: Tensor, source_ids: Tensor, attention_mask: Tensor | None = None,
                  source_attention_mask: Tensor | None = None) -> int:
    """How many leading positions every target prompt shares with its source (tokens and mask).
    A causal model computes the same activations there in both runs (every site at position p
    depends on positions 0..p only), so a patch at those positions writes values over themselves."""
    if (attention_mask is None) != (source_attention_mask is None):
        return 0
    if attention_mask is not None and not torch.equal(attention_mask.to(source_attention_mask.device),
                                                      source_attention_mask):
        return 0
    differs = (target_ids != source_ids.to(target_ids.device)).any(0)
    return int(differs.nonzero()[0, 0]) if bool(differs.any()) else target_ids.shape[1]


def _narrow(cells: list[Cell], shared: int, seq: int) -> list[Cell | None]:
    """Each cell without its positions in the shared prefix (patches there change nothing);
    ``None`` for a cell with no position left: the target's own result."""
    if shared == 0:
        return list(cells)
    out: list[Cell | None] = []
    for cell in cells:
        wanted = range(seq) if cell.positions is None else cell.positions
        kept = tuple(p for p in wanted if p >= shared)
        out.append(None if not kept else cell if len(kept) == len(wanted) else Cell(cell.layer, kept, cell.head))
    return out


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc)


def _naive(model, target_ids, attention_mask, kind, cells, source, metric, positions, progress) -> Tensor:
    results = []
    for cell in _progress(cells, len(cells), progress, f"patch {kind} (naive)"):
        heads = None if cell.head is None else (cell.head,)
        site = Site(kind, cell.layer, cell.positions, heads)
        src = source[site.key]
        with intervene(model, {site: lambda act, s=site, v=src: _select_source(s, v)}):
            logits = model(input_ids=target_ids, attention_mask=attention_mask).logits[:, positions]
        results.append(_apply_metric(metric, logits, 1, target_ids.shape[0])[0])
    return torch.stack(results)


def _select_source(site: Site, src: Tensor) -> Tensor:
    pos_dim = 2 if site.kind == "pattern" else 1
    return src[selection_index(site.kind, site.positions, site.heads, src.shape[pos_dim], src.device)]


class _Writes:
    """Pending index-tensor writes of source values into the activations of a batched pass."""

    def __init__(self, kind: str, source: dict, batch: int, seq: int, n_heads: int):
        self.kind, self.source, self.batch, self.seq, self.n_heads = kind, source, batch, seq, n_heads
        self.pending: dict[int, tuple] = {}

    def plan(self, layer: int, cells: list[Cell], first_rows: list[int], q_start: int, device) -> None:
        """Index tensors (rows, positions[, heads]) and values for ``cells`` joining at ``layer``."""
        rows, prompts, pos, heads = [], [], [], []
        for cell, first in zip(cells, first_rows):
            cell_pos = torch.tensor(cell.positions if cell.positions is not None
                                    else range(q_start, self.seq))
            if self.kind in RESID_KINDS:
                cell_heads = torch.zeros(1, dtype=torch.long)  # no head axis
            else:
                cell_heads = torch.tensor([cell.head]) if cell.head is not None else torch.arange(self.n_heads)
            b, p, h = torch.meshgrid(torch.arange(self.batch), cell_pos, cell_heads, indexing="ij")
            rows.append(b.reshape(-1) + first)
            prompts.append(b.reshape(-1))
            pos.append(p.reshape(-1))
            heads.append(h.reshape(-1))
        rows, prompts, pos, heads = torch.cat(rows), torch.cat(prompts), torch.cat(pos), torch.cat(heads)
        held = pos >= q_start  # positions the last block skips: nothing there is read
        rows, prompts, pos, heads = (x[held].to(device) for x in (rows, prompts, pos, heads))
        src = self.source[f"{self.kind}.{layer}"]
        if self.kind in RESID_KINDS:
            index, values = (rows, pos - q_start), src[prompts, pos]
        elif self.kind == "pattern":
            index, values = (rows, heads, pos - q_start), src[prompts, heads, pos]
        else:
            index, values = (rows, pos - q_start, heads), src[prompts, pos, heads]
        self.pending[layer] = (index, values)

    def apply(self, layer: int, act: Tensor) -> Tensor | None:
        if layer not in self.pending:
            return None
        index, values = self.pending.pop(layer)
        act.index_put_(tuple(i.to(act.device) for i in index), values.to(act.device, act.dtype))
        return act


class _OnlyAt:
    """While ``keep`` is set, a module runs on those positions only and outputs zeros elsewhere:
    used on the last block's MLP, whose output at other positions feeds nothing."""

    def __init__(self):
        self.keep: Tensor | None = None
        self.length = 0

    def install(self, module, stack: ExitStack) -> None:
        pre = module.register_forward_pre_hook(self.pre, prepend=True)
        post = module.register_forward_hook(self.post, prepend=True)
        stack.callback(pre.remove)
        stack.callback(post.remove)

    def pre(self, module, args):
        if self.keep is None:
            return None
        self.length = args[0].shape[1]
        return (args[0][:, self.keep.to(args[0].device)], *args[1:])

    def post(self, module, args, output):
        if self.keep is None:
            return None
        full = output.new_zeros(output.shape[0], self.length, *output.shape[2:])
        full[:, self.keep.to(output.device)] = output
        return full


def default_call_cost(adapter, device) -> float:
    """What one block call costs beyond its arithmetic, in positions (one row, one block): a fixed
    cost of about 2e6 FLOPs on a CPU (measured: merging more hurts there) and 1e11 on a GPU
    (~0.3 ms of kernel launches), over ~24 d^2 FLOPs a position."""
    fixed = 1e11 if torch.device(device).type == "cuda" else 2e6
    return fixed / (24 * adapter.d_model ** 2)


def _plan_passes(groups: dict[int, list[int]], join: list[int], n_layers: int, batch: int, max_rows: int,
                 call_cost: float) -> list[tuple[int, list[int]]]:
    """Merge cells that share a first position into passes, and neighbouring first positions into
    one pass when recomputing the few extra positions costs less than the block calls it saves;
    split passes to at most ``max_rows`` rows."""
    cells_per_pass = max_rows // batch
    passes: list[tuple[int, list[int]]] = []
    for first, members in sorted(groups.items()):
        members = sorted(members, key=lambda i: join[i])
        if passes:
            start, current = passes[-1]
            extra = sum(batch * (first - start) * (n_layers - join[i]) for i in members)
            saved = call_cost * (n_layers - max(join[current[0]], join[members[0]]))
            if len(current) + len(members) <= cells_per_pass and extra <= saved:
                current.extend(members)
                current.sort(key=lambda i: join[i])
                continue
        passes.append((first, members))
    return [(start, members[i:i + cells_per_pass]) for start, members in passes
            for i in range(0, len(members), cells_per_pass)]


def _restart(model, target_ids, attention_mask, kind, cells, source, metric, positions, max_rows,
             progress, call_cost) -> Tensor:
    """``cells[i] is None``: the patch changes nothing (:func:`shared_prefix`), cell i is the target's own."""
    adapter = get_adapter(model)
    n_layers, (batch, seq) = adapter.n_layers, target_ids.shape
    runner = Runner(model, target_ids, attention_mask)
    resid = runner.record()  # resid[l] = block l input, resid[n_layers] = final residual
    device = resid[0].device
    target_logits = adapter.logits(resid[n_layers][:, positions])
    results: list[Tensor | None] = [None] * len(cells)
    if any(cell is None for cell in cells):
        unpatched = _apply_metric(metric, target_logits, 1, batch)[0]
        for i, cell in enumerate(cells):
            if cell is None:
                results[i] = unpatched
    todo = [i for i, cell in enumerate(cells) if cell is not None]
    if not todo:
        return torch.stack(results)
    writes = _Writes(kind, source, batch, seq, adapter.n_heads_of(kind))
    # resid_post.l is resid_pre.(l+1): such a cell joins the batch one layer up
    direct = kind in ("resid_pre", "resid_post")
    shift = 1 if kind == "resid_post" else 0

    def first_position(cell: Cell) -> int:
        return 0 if cell.positions is None else min(cell.positions)

    join = [None if cell is None else cell.layer + shift for cell in cells]
    groups: dict[int, list[int]] = {}
    for i in todo:
        groups.setdefault(first_position(cells[i]), []).append(i)
    chunks = _plan_passes(groups, join, n_layers, batch, max_rows,
                          call_cost if call_cost is not None else default_call_cost(adapter, device))
    last_mlp = _OnlyAt()
    with ExitStack() as stack:
        if not direct:
            for layer in sorted({cells[i].layer for i in todo}):
                install_raw(adapter, kind, layer, lambda act, l=layer: writes.apply(l, act), stack)
        last_mlp.install(adapter.module(n_layers - 1, adapter.spec.mlp), stack)
        for q_start, members in _progress(chunks, len(chunks), progress, f"patch {kind}"):
            hidden, rows = None, torch.empty(0, dtype=torch.long, device=device)
            joined: list[int] = []
            offset = q_start  # first position held in hidden
            # the last block runs from the first position whose logits are read, when no patch
            # inside it touches the keys and values of earlier positions
            read = sorted({p for p in positions if p >= q_start})
            last_start = read[0] if read and kind in SUFFIX_SAFE else q_start
            for layer in range(min(join[i] for i in members), n_layers + 1):
                new = [i for i in members if join[i] == layer]
                if new:
                    first_rows = [len(rows) + k * batch for k in range(len(new))]
                    fresh = resid[layer][:, offset:].repeat(len(new), 1, 1)
                    hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                    rows = torch.cat([rows, torch.arange(batch, device=device).repeat(len(new))])
                    joined += new
                    hooked_last = not direct and layer == n_layers - 1  # its hooks see positions last_start..
                    writes.plan(layer - shift, [cells[i] for i in new], first_rows,
                                last_start if hooked_last else offset, device)
                    if direct:
                        writes.apply(layer - shift, hidden)
                if layer < n_layers - 1:
                    hidden = runner.layer(layer, hidden, q_start, rows)
                elif layer == n_layers - 1:  # its output is read at the logit positions only
                    offset = last_start
                    last_mlp.keep = torch.tensor([p - offset for p in read], dtype=torch.long, device=device)
                    hidden = (runner.last_layer_at(hidden, q_start, offset, rows) if offset > q_start
                              else runner.layer(layer, hidden, q_start, rows))
                    last_mlp.keep = None
            logits = torch.empty(len(rows), len(positions), *target_logits.shape[2:], dtype=target_logits.dtype,
                                 device=target_logits.device)
            late = [j for j, p in enumerate(positions) if p >= q_start]
            early = [j for j, p in enumerate(positions) if p < q_start]
            if late:
                logits[:, late] = adapter.logits(hidden[:, [positions[j] - offset for j in late]]).to(logits.dtype)
            if early:  # positions before the first patched one are the target's own
                logits[:, early] = target_logits[:, early].repeat(len(joined), 1, 1)
            values = _apply_metric(metric, logits, len(joined), batch)
            for k, i in enumerate(joined):
                results[i] = values[k]
    return torch.stack(results)


# --- the sweep grid and its named wrappers -------------------------------------------------
@dataclass(frozen=True)
class Grid:
    cells: list[Cell]
    shape: list[int]                 # [n_layers, (n_positions,) (n_heads,)]
    layers: list[int]
    positions: list[int]             # the position axis, or the jointly patched positions
    heads: list[int] | None
    per_position: bool


def sweep_grid(model, site: str, seq: int, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, heads: Sequence[int] | None = None,
               per_position: bool | None = None) -> Grid:
    """Cells of a layer x (position) x (head) sweep; defaults: every layer, position and head, one
    position per cell for residual-type sites, all positions at once for head sites."""
    adapter = get_adapter(model)
    if site not in SITE_KINDS:
        raise EngineError(f"unknown site {site!r}; sites are {', '.join(SITE_KINDS)}")
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(l) for l in layers]
    if per_position is None:
        per_position = site in RESID_KINDS
    pos_axis = check_positions(list(range(seq)) if positions is None else list(positions), seq)
    head_axis = None
    if site not in RESID_KINDS:
        n = adapter.n_heads_of(site)
        head_axis = list(range(n)) if heads is None else [adapter.check_head(h, site) for h in heads]
    elif heads is not None:
        raise EngineError(f"site {site} has no heads; heads apply to {', '.join(HEAD_KINDS)}, pattern")
    joint = None if positions is None else tuple(pos_axis)
    cells = [Cell(layer, (p,) if per_position else joint, h)
             for layer in layers for p in (pos_axis if per_position else [None])
             for h in (head_axis if head_axis is not None else [None])]
    shape = [len(layers)] + ([len(pos_axis)] if per_position else []) + (
        [len(head_axis)] if head_axis is not None else [])
    return Grid(cells, shape, layers, pos_axis, head_axis, per_position)


def patch_sweep(model, target_ids: Tensor, source_ids: Tensor, site: str, metric: Metric | None = None, *,
                layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                heads: Sequence[int] | None = None, per_position: bool | None = None, **kwargs) -> Tensor:
    """Sweep ``site`` over layers x positions (``per_position``) x heads (head sites, pattern).

    Returns ``[n_layers, (n_positions,) (n_heads,) batch]`` metric values (or logits). With
    ``per_position=False`` each cell patches all of ``positions`` (None: every position) at once.
    Defaults: per position for residual-type sites, all positions at once for head sites.
    """
    grid = sweep_grid(model, site, target_ids.shape[-1], layers, positions, heads, per_position)
    values = patch_cells(model, target_ids, source_ids, site, grid.cells, metric, **kwargs)
    return values.reshape(*grid.shape, *values.shape[1:])


def patch_resid_sweep(model, target_ids, source_ids, metric=None, *, site: str = "resid_pre", **kwargs) -> Tensor:
    """resid_pre (or resid_post) by layer x position: ``[n_layers, n_positions, batch]``."""
    if site not in ("resid_pre", "resid_post"):
        raise EngineError(f"patch_resid_sweep site must be resid_pre or resid_post, got {site!r}")
    return patch_sweep(model, target_ids, source_ids, site, metric, **kwargs)


def patch_attn_out_sweep(model, target_ids, source_ids, metric=None, **kwargs) -> Tensor:
    """Attention output by layer x position: ``[n_layers, n_positions, batch]``."""
    return patch_sweep(model, target_ids, source_ids, "attn_out", metric, **kwargs)


def patch_mlp_out_sweep(model, target_ids, source_ids, metric=None, **kwargs) -> Tensor:
    """MLP output by layer x position: ``[n_layers, n_positions, batch]``."""
    return patch_sweep(model, target_ids, source_ids, "mlp_out", metric, **kwargs)


def patch_head_sweep(model, target_ids, source_ids, metric=None, *, site: str = "head_out", **kwargs) -> Tensor:
    """Head outputs (or q/k/v, pattern) by layer x head over all or chosen positions:
    ``[n_layers, n_heads, batch]``; k and v index key/value heads."""
    if site not in HEAD_KINDS + ("pattern",):
        raise EngineError(f"patch_head_sweep site must be one of {', '.join(HEAD_KINDS)}, pattern; got {site!r}")
    return patch_sweep(model, target_ids, source_ids, site, metric, per_position=False, **kwargs)


def patch_head_by_pos_sweep(model, target_ids, source_ids, metric=None, *, site: str = "head_out",
                            **kwargs) -> Tensor:
    """Head outputs (or q/k/v, pattern by query position) by layer x position x head:
    ``[n_layers, n_positions, n_heads, batch]``."""
    if site not in HEAD_KINDS + ("pattern",):
        raise EngineError(f"patch_head_by_pos_sweep site must be one of {', '.join(HEAD_KINDS)}, pattern; "
                          f"got {site!r}")
    return patch_sweep(model, target_ids, source_ids, site, metric, per_position=True, **kwargs)
