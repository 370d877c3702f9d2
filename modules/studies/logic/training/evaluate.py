"""Exact-match evaluation of a saved logic model, broken down by problem type."""
from __future__ import annotations

import pandas as pd
import torch

from modules.engine.metrics import wilson_ci
from modules.training.decoding import exact_match, greedy_decode_mixed
from modules.training.sequences import OrderedBatches, encode

BREAKDOWN = ["query_chain", "operator", "source_truth"]


@torch.inference_mode()
def exact_matches(model, tokenizer, frame: pd.DataFrame, batch_size: int = 1000) -> pd.Series:
    """Per-problem greedy exact match of the whole proof (through <eos>)."""
    data = encode(tokenizer, frame["prompt"].tolist(), frame["answer"].tolist())
    max_new_tokens = int((data.lengths - data.prompt_lengths).max()) + 1
    batches = OrderedBatches(data, batch_size)
    correct = torch.empty(len(data), dtype=torch.bool)
    model.eval()
    for i in range(len(batches)):
        batch, index = batches[i], batches.indices(i)
        generated = greedy_decode_mixed(model, batch.input_ids, batch.prompt_lengths, max_new_tokens,
                                        tokenizer.eos_token_id)
        correct[index] = exact_match(generated, batch.input_ids, batch.prompt_lengths, batch.lengths)
    return pd.Series(correct.numpy(), index=frame.index, name="correct")


def accuracy_row(correct: pd.Series) -> dict:
    ci = wilson_ci(int(correct.sum()), len(correct))
    return {"n": int(len(correct)), "exact_match": float(ci.mean), "ci_low": float(ci.low),
            "ci_high": float(ci.high)}


def breakdown(frame: pd.DataFrame, correct: pd.Series) -> pd.DataFrame:
    """Exact match with Wilson 95% CIs per query chain x operator x source truth values."""
    rows = []
    for key, group in correct.groupby([frame[c] for c in BREAKDOWN]):
        rows.append({**dict(zip(BREAKDOWN, key)), **accuracy_row(group)})
    return pd.DataFrame(rows)
