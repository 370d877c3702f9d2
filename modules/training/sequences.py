"""Turn (prompt, answer) text pairs into padded token tensors, and batch them.

A training sequence is ``prompt + answer + <eos>``; the loss covers the answer and <eos> only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedSequences:
    input_ids: torch.Tensor      # [n, max_len] right-padded with the pad id
    prompt_lengths: torch.Tensor  # [n] tokens before the first answer token
    lengths: torch.Tensor         # [n] prompt + answer + eos

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode(tokenizer, prompts: list[str], answers: list[str]) -> EncodedSequences:
    vocab = tokenizer.get_vocab()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def ids(text: str) -> list[int]:
        try:
            return [vocab[word] for word in text.split()]
        except KeyError as missing:
            raise ValueError(f"token {missing} is not in the logic vocabulary (text: {text[:60]!r})") from None

    rows, prompt_lengths = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = ids(prompt)
        rows.append(prompt_ids + ids(answer) + [eos])
        prompt_lengths.append(len(prompt_ids))
    lengths = torch.tensor([len(r) for r in rows])
    input_ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    return EncodedSequences(input_ids, torch.tensor(prompt_lengths), lengths)


def answer_loss_mask(batch: EncodedSequences) -> torch.Tensor:
    """[n, max_len-1] mask over next-token targets that belong to the answer (and its <eos>)."""
    target_pos = torch.arange(1, batch.input_ids.shape[1]).unsqueeze(0)
    return (target_pos >= batch.prompt_lengths.unsqueeze(1)) & (target_pos < batch.lengths.unsqueeze(1))


class ShuffledBatches(torch.utils.data.Dataset):
    """An epoch of batches: item i is one batch, trimmed to its longest sequence.

    Building whole batches from index slices avoids per-example collation, which dominates
    the step time of a model this small on a CPU.
    """

    def __init__(self, data: EncodedSequences, batch_size: int, seed: int, shuffle: bool = True,
                 group_by_prompt_length: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self.group_by_prompt_length = group_by_prompt_length
        self.epoch = 0
        self._order = self._make_order()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._make_order()

    def _make_order(self) -> torch.Tensor:
        n = len(self.data)
        if self.group_by_prompt_length:  # decoding wants one prompt length per batch
            return torch.argsort(self.data.prompt_lengths * n + torch.arange(n), stable=True)
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=generator)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __getitem__(self, i: int) -> EncodedSequences:
        index = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        lengths = self.data.lengths[index]
        return EncodedSequences(self.data.input_ids[index, : int(lengths.max())],
                                self.data.prompt_lengths[index], lengths)


def collate_single(batch: EncodedSequences) -> EncodedSequences:
    return batch
