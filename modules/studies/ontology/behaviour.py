"""What a model does on study 2's items: greedy chain of thought after the few-shot examples (exact
match with the gold chain, and the final True/False label), and each subtask's next word given the
gold prefix (teacher forcing: one pass over prompt + gold answer scores every subtask of an item).
The solved examples are one shared prefix, run once (:class:`SharedPrefix`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch

from modules.analysis.generation import encode, encode_rows, generate_continuations, length_batches, padded
from modules.core.params import load, param
from modules.engine.metrics import wilson_ci
from modules.engine.patchscope import suppressed_tokens
from modules.studies.ontology.prompts import shot_blocks, target_token, test_prompt


@dataclass(frozen=True)
class BehaviourConfig:
    shots: int = param(6, range=(0, 64))
    items: int = param(100, range=(1, 10**6))     # fictional items, from the first
    batch_size: int = param(8, range=(1, 4096))
    extra_tokens: int = param(8, range=(0, 256))  # generated beyond the gold answer's length

    threads: int = param(0, range=(0, 1024), optional=True)  # machine setting: torch's intra-op threads (0: as is)

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False) -> "BehaviourConfig":
        return load(cls, dict(mapping), "ontology.behaviour", complete=complete)


def ci(successes: int, total: int) -> dict:
    c = wilson_ci(successes, total)
    return {"k": int(successes), "n": int(total), "mean": float(c.mean), "ci_low": float(c.low), "ci_high": float(c.high)}


def generate_answers(model, tokenizer, prompts: list[str], max_new: list[int], batch_size: int,
                     progress: Callable[[str], None] = lambda m: None) -> list[str]:
    """Greedy continuations, cut at the first newline (the end of a response line)."""
    return [text.split("\n")[0].strip()
            for text in generate_continuations(model, tokenizer, prompts, max_new, batch_size, progress)]


def teacher_forced_argmax(model, tokenizer, texts: list[str], batch_size: int) -> tuple[list[list[int]], list]:
    """Per text: its full ids, and the argmax next token at every position (suppressed tokens skipped)."""
    enc = encode_rows(model, tokenizer, texts)
    shared = enc.shared.length
    suppress = suppressed_tokens(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    argmax: list = [None] * len(texts)
    for rows in length_batches([len(s) for s in enc.suffixes], batch_size, equal=False):
        ids, mask = padded(enc.suffixes, rows, pad)
        logits = enc.shared.logits(ids, mask)
        if suppress:
            logits[..., suppress] = float("-inf")
        best = logits.argmax(-1)
        for r, i in enumerate(rows):
            argmax[i] = best[r, :len(enc.suffixes[i])]
    full = [enc.shared.ids[0].tolist() + s for s in enc.suffixes]
    return full, [(shared, a) for a in argmax]


def behaviour(model, tokenizer, items: pd.DataFrame, subtasks: pd.DataFrame, shots: pd.DataFrame,
              config: BehaviourConfig, progress: Callable[[str], None] = lambda m: None):
    """(per-item table, per-subtask table, summary with Wilson CIs)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    items = items[items["ontology"] == "fictional"].head(config.items).reset_index(drop=True)
    blocks = shot_blocks(shots, "fictional", config.shots)
    prompts = [test_prompt(blocks, text) for text in items["input"]]
    answer_len = [len(encode(tokenizer, " " + a)) for a in items["answer"]]
    progress(f"{len(items)} items, {config.shots} shots: greedy chain of thought")
    generated = generate_answers(model, tokenizer, prompts, [n + config.extra_tokens for n in answer_len],
                                 config.batch_size, progress)
    per_item = items[["id", "label", "cot", "answer"]].copy()
    per_item["generated"] = generated
    per_item["cot_exact"] = [g.startswith(c) for g, c in zip(generated, items["cot"])]
    per_item["predicted_label"] = [g.split()[-1] if g.split() else "" for g in generated]
    per_item["label_correct"] = [p == str(label) for p, label in zip(per_item["predicted_label"], items["label"])]
    per_item["answer_exact"] = [g == a for g, a in zip(generated, items["answer"])]

    progress("next word of every subtask given the gold prefix")
    full, argmax = teacher_forced_argmax(model, tokenizer, [test_prompt(blocks, t, a) for t, a in
                                                            zip(items["input"], items["answer"])], config.batch_size)
    index = {item_id: i for i, item_id in enumerate(items["id"])}
    rows = []
    tasks = subtasks[(subtasks["variant"] == "paper") & subtasks["item_id"].isin(index)]
    for task in tasks.itertuples():
        i = index[task.item_id]
        found = target_token(full[i], encode(tokenizer, test_prompt(blocks, items["input"][i], task.prefix)))
        row = {"id": task.id, "item_id": task.item_id, "subtask": task.subtask, "kind": task.kind,
               "target": task.target, "position": -1, "token": -1, "predicted": -1, "correct": False,
               "merged": found is None}
        if found is not None:
            shared, best = argmax[i]
            predicted = int(best[found.position - shared])
            row |= {"position": found.position, "token": found.token, "predicted": predicted,
                    "correct": predicted == found.token}
        rows.append(row)
    per_subtask = pd.DataFrame(rows)
    return per_item, per_subtask, summarise(per_item, per_subtask, config)


def summarise(per_item: pd.DataFrame, per_subtask: pd.DataFrame, config: BehaviourConfig) -> dict:
    summary = {"n_items": len(per_item), "shots": config.shots,
               "cot_exact": ci(int(per_item["cot_exact"].sum()), len(per_item)),
               "answer_exact": ci(int(per_item["answer_exact"].sum()), len(per_item)),
               "label_accuracy": ci(int(per_item["label_correct"].sum()), len(per_item)),
               "label_accuracy_by_label": {str(label): ci(int(g["label_correct"].sum()), len(g))
                                           for label, g in per_item.groupby("label")},
               "subtasks": {}}
    for s, group in per_subtask.groupby("subtask"):
        scored = group[~group["merged"]]
        summary["subtasks"][str(s)] = {"kind": group["kind"].iloc[0], "merged": int(group["merged"].sum()),
                                       **ci(int(scored["correct"].sum()), len(scored))}
    return summary
