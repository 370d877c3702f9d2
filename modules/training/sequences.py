"""Turn (prompt, answer) text pairs into padded token tensors, and batch them.

A training sequence is ``prompt + answer + <eos>``; the loss covers the answer and <eos>, plus an
optional, separately averaged loss on the prompt tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modules.training.decoding import answer_targets


@dataclass
class EncodedSequences:
    input_ids: torch.Tensor      # [n, max_len] right-padded with the pad id
    prompt_lengths: torch.Tensor  # [n] tokens before the first answer token
    lengths: torch.Tensor         # [n] prompt + answer + eos
    source_targets: torch.Tensor | None = None  # [n, max_len] auxiliary per-token targets, -100 where none
    shared_lengths: torch.Tensor | None = None  # [n] leading tokens shared with other rows (a study's shared-prefix training)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode(tokenizer, prompts: list[str], answers: list[str]) -> EncodedSequences:
    vocab = tokenizer.get_vocab()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def ids(text: str) -> list[int]:
        try:
            return [vocab[word] for word in text.split()]
        except KeyError as missing:
            raise ValueError(f"token {missing} is not in the vocabulary (text: {text[:60]!r})") from None

    flat, prompt_lengths, lengths = [], [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids, answer_ids = ids(prompt), ids(answer)
        flat += prompt_ids
        flat += answer_ids
        flat.append(eos)
        prompt_lengths.append(len(prompt_ids))
        lengths.append(len(prompt_ids) + len(answer_ids) + 1)
    lengths = torch.tensor(lengths, dtype=torch.long)
    width = int(lengths.max()) if len(lengths) else 0
    input_ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    # one masked copy fills every row's prefix in row-major order: a tensor per row costs seconds
    # on the 200,000-row training split
    input_ids[torch.arange(width) < lengths.unsqueeze(1)] = torch.tensor(flat, dtype=torch.long)
    return EncodedSequences(input_ids, torch.tensor(prompt_lengths, dtype=torch.long), lengths)


def answer_loss_mask(batch: EncodedSequences) -> torch.Tensor:
    """[n, max_len-1] mask over next-token targets that belong to the answer (and its <eos>)."""
    return answer_targets(batch.input_ids, batch.prompt_lengths, batch.lengths)


def answer_loss_weights(batch: EncodedSequences, first_token_weight: float = 1.0,
                        inner_answer_id: int | None = None) -> torch.Tensor:
    """[n, max_len-1] float weights over next-token targets: 1 on answer tokens and <eos>, 0
    elsewhere, and ``first_token_weight`` on the first answer token, the one decision that
    needs the whole multi-hop search (the rest of a proof follows rule by rule).

    With ``inner_answer_id`` (the ``answer`` keyword's id), the token after every earlier
    ``answer`` inside the prompt is weighted ``first_token_weight`` too: a multi-query sequence
    (``... query X answer f query Y answer``) then supervises each query's first proof token.
    """
    weights = answer_loss_mask(batch).float()
    rows = torch.arange(len(batch), device=weights.device)
    weights[rows, batch.prompt_lengths.to(weights.device) - 1] *= first_token_weight
    if inner_answer_id is not None:
        source_pos = torch.arange(weights.shape[1], device=weights.device).unsqueeze(0)
        inner = (batch.input_ids[:, :-1].to(weights.device) == inner_answer_id) & (
            source_pos + 1 < batch.prompt_lengths.to(weights.device).unsqueeze(1))
        weights[inner] = first_token_weight
    return weights


def answer_loss(logits: torch.Tensor, batch: EncodedSequences, first_token_weight: float = 1.0,
                inner_answer_id: int | None = None) -> torch.Tensor:
    """Weighted mean next-token cross-entropy over the answer; ``logits`` are [n, len-1, vocab]."""
    weights = answer_loss_weights(batch, first_token_weight, inner_answer_id).to(logits.device)
    targets = batch.input_ids[:, 1:].to(logits.device)
    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_loss * weights).sum() / weights.sum()


def prompt_loss(logits: torch.Tensor, batch: EncodedSequences) -> torch.Tensor:
    """Mean next-token cross-entropy over the prompt (targets from its second token on).

    An auxiliary loss: predicting the rules and facts makes the model learn which variables
    each rule links and which are sources, the content matching that routing by the query needs.
    """
    targets = batch.input_ids[:, 1:].to(logits.device)
    positions = torch.arange(1, batch.input_ids.shape[1], device=logits.device).unsqueeze(0)
    mask = (positions < batch.prompt_lengths.to(logits.device).unsqueeze(1)).float()
    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_loss * mask).sum() / mask.sum()


def training_loss(logits: torch.Tensor, batch: EncodedSequences, first_token_weight: float = 1.0,
                  prompt_loss_weight: float = 0.0, inner_answer_id: int | None = None) -> torch.Tensor:
    """The answer loss plus ``prompt_loss_weight`` times the prompt loss."""
    loss = answer_loss(logits, batch, first_token_weight, inner_answer_id)
    return loss + prompt_loss_weight * prompt_loss(logits, batch) if prompt_loss_weight else loss


def _take(data: EncodedSequences, index: torch.Tensor) -> EncodedSequences:
    lengths = data.lengths[index]
    width = int(lengths.max())
    targets = None if data.source_targets is None else data.source_targets[index, :width]
    shared = None if data.shared_lengths is None else data.shared_lengths[index]
    return EncodedSequences(data.input_ids[index, :width], data.prompt_lengths[index], lengths, targets, shared)


class BatchStream(torch.utils.data.Dataset):
    """Training batches as a function of the global batch number.

    Batch b comes from epoch b // batches_per_epoch of a per-epoch permutation seeded by
    (seed, epoch), so the stream is the same however it is cut: a resumed run sets ``start``
    to the batches already consumed and sees exactly what an uninterrupted run would.
    Whole batches are built from index slices, because per-example collation dominates the
    step time of a model this small on a CPU. Under DDP each rank reads every W-th item.

    ``groups`` (a group number per row) keeps the rows of a group next to each other in the
    permutation, so they share a batch unless a batch boundary falls between them: query twins
    then meet in one gradient step. With every row its own group the stream is the plain one.
    """

    def __init__(self, data: EncodedSequences, batch_size: int, seed: int, n_batches: int,
                 groups: torch.Tensor | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if groups is not None and groups.shape != (len(data),):
            raise ValueError(f"groups must hold one group number per row ({len(data)}), got shape "
                             f"{tuple(groups.shape)}")
        self.data, self.batch_size, self.seed, self.n_batches = data, batch_size, seed, n_batches
        self.groups = groups
        self.per_epoch = max(1, len(data) // batch_size)  # drop the ragged tail batch
        self.start = 0
        self._epoch, self._order = -1, None

    def _permutation(self, generator: torch.Generator) -> torch.Tensor:
        if self.groups is None:
            return torch.randperm(len(self.data), generator=generator)
        n_groups = int(self.groups.max()) + 1
        rank = torch.empty(n_groups, dtype=torch.long)
        rank[torch.randperm(n_groups, generator=generator)] = torch.arange(n_groups)
        return torch.argsort(rank[self.groups], stable=True)  # rows of a group in their written order

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> EncodedSequences:
        epoch, slot = divmod(self.start + i, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, self._permutation(generator)
        return _take(self.data, self._order[slot * self.batch_size:(slot + 1) * self.batch_size])


class OrderedBatches(torch.utils.data.Dataset):
    """Evaluation batches in a fixed order, sorted by prompt length (decoding wants one length)."""

    def __init__(self, data: EncodedSequences, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size = data, batch_size
        n = len(data)
        self.order = torch.argsort(data.prompt_lengths * n + torch.arange(n), stable=True)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def indices(self, i: int) -> torch.Tensor:
        return self.order[i * self.batch_size:(i + 1) * self.batch_size]

    def __getitem__(self, i: int) -> EncodedSequences:
        return _take(self.data, self.indices(i))


def collate_single(batch: EncodedSequences) -> EncodedSequences:
    return batch
