"""Seconds per training step, measured on the training loop's own module, optimizer and batches
(the step-time benchmark's clock)."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from modules.training.sequences import BatchStream
from modules.studies.logic.training.train import TrainConfig, new_logic_module


class StepTimer:
    """A fresh model with its optimizer and batch stream; calling it runs ``n`` training steps
    from batch ``first`` on and returns seconds per step."""

    def __init__(self, config: TrainConfig, seed: int, train, val, groups, n_batches: int,
                 shared_prefix: bool = True):
        self.config = config
        self.module = new_logic_module(config, seed, train, val)
        if not shared_prefix:  # every row runs its whole sequence
            train = replace(train, shared_lengths=None)
        self.optimizer = self.module.configure_optimizers()["optimizer"]
        self.stream = BatchStream(train, config.batch_size, seed, n_batches, groups)

    def __call__(self, first: int, n: int) -> float:
        start = time.perf_counter()
        for index in range(first, first + n):
            loss = self.module.training_step(self.stream[index], index)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
            self.optimizer.step()
        return (time.perf_counter() - start) / n
