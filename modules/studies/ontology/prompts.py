"""Study 2's prompts as token ids: the paper's few-shot layout, one shared prefix of solved
examples, and each subtask's target as the first sub-token the model's tokenizer gives it in context.

A nonce word such as "Sterpuses" is several tokens for a pretrained tokenizer. A subtask's target
is the first token after the gold prefix in the tokenized prompt + chain of thought (first-sub-token
matching, as the paper's ``answer_token_id``). Where the tokenizer merges the last prefix character
with the target's first characters, the prefix alone does not tokenize to a prefix of the whole, and
the subtask is dropped and counted (``merged``).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from modules.studies.ontology.data.generator import block, few_shot_prompt


class PromptError(ValueError):
    """Prompts that cannot be built as asked; the message is one line."""


def shot_blocks(shots: pd.DataFrame, ontology: str, k: int) -> list[str]:
    """The first ``k`` solved blocks of ``ontology``, in prompt order."""
    own = shots[shots["ontology"] == ontology].sort_values("order")
    if k > len(own):
        raise PromptError(f"{k} shots asked for, but the data has {len(own)} {ontology} examples "
                          "(ontology.data.shots)")
    return list(own["block"][:k])


def shots_text(blocks: list[str]) -> str:
    return few_shot_prompt(blocks, "")


def test_prompt(blocks: list[str], input_text: str, response: str = "") -> str:
    return few_shot_prompt(blocks, block(input_text, response))


@dataclass(frozen=True)
class TargetToken:
    position: int      # where the model predicts it: the last prefix token
    token: int         # the target's first sub-token


def target_token(full_ids: list[int], prefix_ids: list[int]) -> TargetToken | None:
    """The target's first sub-token in ``full_ids`` (prompt + chain of thought), given the ids of
    the prompt + the gold prefix; None where the tokenizer merged across the boundary."""
    n = len(prefix_ids)
    if n >= len(full_ids) or full_ids[:n] != prefix_ids:
        return None
    return TargetToken(n - 1, full_ids[n])
