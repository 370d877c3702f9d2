"""Greedy continuations of many prompts on a pretrained LM, exactly as one unpadded prompt at a time
gives them: the tokens every prompt starts with (a few-shot block, a BOS) run once
(:class:`SharedPrefix`), and the rest is batched by equal length, so no padding and no position
shift enters a generation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from modules.engine.patchscope import SharedPrefix


def encode(tokenizer, text: str) -> list[int]:
    """The model's own ids for a prompt: with its BOS where it uses one (exactly one)."""
    return tokenizer(text)["input_ids"]


def common_prefix(sequences: list[list[int]]) -> int:
    first = sequences[0]
    n = len(first)
    for seq in sequences[1:]:
        n = min(n, len(seq))
        for i in range(n):
            if seq[i] != first[i]:
                n = i
                break
    return n


@dataclass
class Encoded:
    shared: SharedPrefix
    suffixes: list[list[int]]     # per row: the ids after the shared prefix


def split_shared(model, ids: list[list[int]]) -> Encoded:
    """Token sequences split at the longest prefix they all share, which runs once."""
    n = common_prefix(ids)
    n = min(n, min(len(i) for i in ids) - 1)  # every row keeps at least one token of its own
    return Encoded(SharedPrefix(model, torch.tensor([ids[0][:n]])), [i[n:] for i in ids])


def encode_rows(model, tokenizer, texts: list[str]) -> Encoded:
    return split_shared(model, [encode(tokenizer, t) for t in texts])


def length_batches(lengths: list[int], batch_size: int, equal: bool) -> Iterator[list[int]]:
    """Row indices in batches of at most ``batch_size``, shortest first; with ``equal`` every batch
    holds rows of one length."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if not equal:
        for start in range(0, len(order), batch_size):
            yield order[start:start + batch_size]
        return
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(lengths[i], []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


def padded(suffixes: list[list[int]], rows: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rows`` of ``suffixes`` right-padded with ``pad``, and their attention mask."""
    width = max(len(suffixes[i]) for i in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        ids[r, :len(suffixes[i])] = torch.tensor(suffixes[i])
        mask[r, :len(suffixes[i])] = 1
    return ids, mask


def generate_continuations(model, tokenizer, prompts: list[str], max_new: list[int] | int, batch_size: int,
                           progress: Callable[[str], None] = lambda m: None, decode: bool = True) -> list:
    """Each prompt's greedy continuation of ``max_new`` tokens (per prompt or one for all), decoded
    as the tokenizer writes it (special tokens kept), or its token ids when not ``decode``."""
    if isinstance(max_new, int):
        max_new = [max_new] * len(prompts)
    enc = encode_rows(model, tokenizer, prompts)
    out: list[str | None] = [None] * len(prompts)
    for b, rows in enumerate(length_batches([len(s) for s in enc.suffixes], batch_size, equal=True)):
        ids = torch.tensor([enc.suffixes[i] for i in rows])
        tokens = enc.shared.generate(ids, max(max_new[i] for i in rows)).tokens
        for r, i in enumerate(rows):
            out[i] = tokenizer.decode(tokens[r, :max_new[i]]) if decode else tokens[r, :max_new[i]].tolist()
        if b % 10 == 0:
            progress(f"generated {sum(o is not None for o in out)} of {len(prompts)} continuations")
    return out
