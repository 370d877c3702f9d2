"""Linear and small-MLP probes on cached activations, many sites trained at once.

``ProbeModule`` holds G independent probes as batched weights ``[G, d, C]`` and trains them
in one Lightning loop on activations ``[G, n, d]`` (G = layer x position sites). The loss is
the sum of each probe's mean cross-entropy and AdamW is elementwise, so every probe follows
exactly the trajectory it would follow trained alone, at a fraction of the cost.

Features are standardised with the training split's mean and std per site (residual norms
grow with depth; one learning rate then fits every layer). ``weight`` and ``direction`` are
mapped back to raw activation space, ready for steering.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Hashable, Iterator, Mapping

import lightning.pytorch as pl
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from modules.engine.metrics import accuracy_ci

SMALL_BATCH = 1 << 22  # elements per training batch below which probes train single-threaded


class ProbeModule(pl.LightningModule):
    """G probes, linear (``hidden=0``) or one ReLU hidden layer: ``[G, B, d] -> [G, B, C]``."""

    def __init__(self, n_groups: int, d_in: int, n_classes: int, hidden: int = 0, lr: float = 5e-2,
                 weight_decay: float = 1e-2, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        gen = torch.Generator().manual_seed(seed)

        def uniform(fan_in: int, *shape: int) -> nn.Parameter:
            # nn.Linear's default init, one draw shared by all G probes: a probe's result then
            # depends on its seed and data only, not on which other sites share the batch.
            one = (torch.rand(*shape, generator=gen) * 2 - 1) / fan_in ** 0.5
            return nn.Parameter(one.expand(n_groups, *shape).clone())

        width = hidden or d_in
        if hidden:
            self.w_in = uniform(d_in, d_in, hidden)
            self.b_in = uniform(d_in, 1, hidden)
        self.w_out = uniform(width, width, n_classes)
        self.b_out = uniform(width, 1, n_classes)
        self.register_buffer("mean", torch.zeros(n_groups, 1, d_in))
        self.register_buffer("std", torch.ones(n_groups, 1, d_in))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        if self.hparams.hidden:
            x = torch.relu(torch.baddbmm(self.b_in, x, self.w_in))
        return torch.baddbmm(self.b_out, x, self.w_out)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        # Sum over probes of each probe's mean loss: probes stay independent.
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]), reduction="sum") / y.shape[0]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def raw_weight(self) -> Tensor | None:
        """Linear probes' class weights in raw activation space, ``[G, C, d]``; None for MLPs."""
        if self.hparams.hidden:
            return None
        return (self.w_out / self.std.transpose(1, 2)).transpose(1, 2).detach()


class _Rows(Dataset):
    """Rows of ``x [G, n, d]`` indexed by a whole batch of example ids at once."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[:, idx], self.y[idx]


class _EpochBatches(Sampler):
    """All epochs' shuffled batches as one Lightning epoch: less per-epoch overhead."""

    def __init__(self, n: int, batch_size: int, epochs: int, seed: int):
        self.n, self.batch_size, self.epochs, self.seed = n, batch_size, epochs, seed

    def __len__(self) -> int:
        return self.epochs * -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            order = torch.randperm(self.n, generator=gen) if self.batch_size < self.n else torch.arange(self.n)
            yield from order.split(self.batch_size)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-fit banners (device info, tips) and data-loader worker hints."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal deprecation
            yield
    finally:
        logger.setLevel(level)


def split_indices(labels: Tensor, test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Stratified, seeded train/test split: each class keeps ``test_fraction`` of its examples for test."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(max(round(len(idx) * test_fraction), 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@dataclass
class ProbeResult:
    """Per-probe results, each tensor with a leading ``[G]`` axis in input order."""
    train_accuracy: Tensor
    test_accuracy: Tensor
    ci_low: Tensor      # Wilson 95% CI of the test accuracy
    ci_high: Tensor
    n_test: int
    weight: Tensor | None     # [G, C, d] class weights in raw activation space (linear only)
    direction: Tensor | None  # unit steering vector: [G, d] (class 1 - class 0) if binary, else [G, C, d]
    module: ProbeModule


def train_probes(activations: Tensor, labels: Tensor, *, hidden: int = 0, epochs: int = 200,
                 batch_size: int | None = None, lr: float = 5e-2, weight_decay: float = 1e-2,
                 test_fraction: float = 0.25, seed: int = 0) -> ProbeResult:
    """Train one probe per site on ``activations`` ``[G, n, d]`` (or ``[n, d]``) with labels ``[n]``.

    Full-batch by default (``batch_size=None``); same seed, same weights and accuracies.
    """
    x = activations.detach().float().cpu()
    x = x.unsqueeze(0) if x.ndim == 2 else x
    y = torch.as_tensor(labels).long().cpu()
    if x.ndim != 3:
        raise ValueError(f"activations must be [n, d] or [G, n, d], got shape {tuple(activations.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[1]:
        raise ValueError(f"labels must be [n] with n = {x.shape[1]} (activations' example axis), got {tuple(y.shape)}")
    if y.min() < 0 or len(y.unique()) < 2:
        raise ValueError(f"labels must be class ids >= 0 with at least two classes, got {y.unique().tolist()}")
    if epochs < 1 or hidden < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"need epochs >= 1, hidden >= 0 and batch_size None or >= 1, got epochs={epochs}, "
                         f"hidden={hidden}, batch_size={batch_size}")
    train_idx, test_idx = split_indices(y, test_fraction, seed)
    n_groups, _, d = x.shape
    module = ProbeModule(n_groups, d, int(y.max()) + 1, hidden, lr, weight_decay, seed)
    module.mean.copy_(x[:, train_idx].mean(1, keepdim=True))
    module.std.copy_(x[:, train_idx].std(1, keepdim=True).clamp(min=1e-6))

    size = min(batch_size or len(train_idx), len(train_idx))
    loader = DataLoader(_Rows(x[:, train_idx], y[train_idx]), batch_size=None,
                        sampler=_EpochBatches(len(train_idx), size, epochs, seed))
    # Small probes run fastest on one thread: OpenMP sync costs more than the tiny matmuls,
    # badly so on a busy machine. Large activation sets keep every thread.
    threads = torch.get_num_threads()
    if size * n_groups * d < SMALL_BATCH:
        torch.set_num_threads(1)
    with quiet_lightning():
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        try:
            trainer.fit(module, loader)
        finally:
            torch.set_num_threads(threads)

    module.eval()
    with torch.no_grad():
        correct = module(x).argmax(-1) == y  # [G, n]
    test = accuracy_ci(correct[:, test_idx].T)
    weight = module.raw_weight()
    direction = None
    if weight is not None:
        direction = weight[:, 1] - weight[:, 0] if weight.shape[1] == 2 else weight
        direction = direction / direction.norm(dim=-1, keepdim=True)
    return ProbeResult(correct[:, train_idx].double().mean(1), test.mean, test.low, test.high, len(test_idx),
                       weight, direction, module)


@dataclass
class ProbeGrid:
    table: pd.DataFrame  # one row per site: layer, position, accuracy, ci_low, ci_high, train_accuracy, n_test
    directions: dict[tuple[Hashable, Hashable], Tensor] | None  # (layer, position) -> steering vector


def probe_grid(activations: Mapping[tuple[Hashable, Hashable], Tensor] | Tensor, labels: Tensor,
               max_sites_per_fit: int = 64, **train_kwargs) -> ProbeGrid:
    """Probe every (layer, position) site and return a long table with accuracy and CI.

    ``activations`` is ``{(layer, position): [n, d]}`` or a ``[layers, positions, n, d]`` tensor.
    Sites are trained ``max_sites_per_fit`` at a time in one batched module, which bounds memory
    when a grid of 7B activations does not fit at once.
    """
    if isinstance(activations, Tensor):
        if activations.ndim != 4:
            raise ValueError(f"activations tensor must be [layers, positions, n, d], got {tuple(activations.shape)}")
        activations = {(layer, pos): activations[layer, pos]
                       for layer in range(activations.shape[0]) for pos in range(activations.shape[1])}
    if not activations:
        raise ValueError("activations: no sites to probe")
    if max_sites_per_fit < 1:
        raise ValueError(f"max_sites_per_fit must be >= 1, got {max_sites_per_fit}")
    sites = list(activations)
    rows, directions = [], {}
    for start in range(0, len(sites), max_sites_per_fit):
        chunk = sites[start:start + max_sites_per_fit]
        res = train_probes(torch.stack([activations[s] for s in chunk]), labels, **train_kwargs)
        for i, (layer, pos) in enumerate(chunk):
            rows.append({"layer": layer, "position": pos, "accuracy": res.test_accuracy[i].item(),
                         "ci_low": res.ci_low[i].item(), "ci_high": res.ci_high[i].item(),
                         "train_accuracy": res.train_accuracy[i].item(), "n_test": res.n_test})
            if res.direction is not None:
                directions[(layer, pos)] = res.direction[i]
    return ProbeGrid(pd.DataFrame(rows), directions or None)
