"""Study 1's auxiliary training targets: the source of each rule conclusion, read by a training-only
head on the residual stream (``train.source_aux``). The generic sequence encoding, losses and batch
streams are in :mod:`modules.training.sequences`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modules.studies.logic.data.labels import conclusion_sources


def conclusion_source_targets(tokenizer, prompts: list[str], labelled: list[bool], width: int,
                              at_query: bool = False) -> torch.Tensor:
    """[n, width] vocabulary ids of ``conclusion_sources`` at the words of each ``labelled`` prompt
    (words and tokens correspond one to one), -100 everywhere else. ``at_query``: the query
    variable too, with the label of the rule conclusion it names (the linear chain's source for a
    linear query, the merge operator for a LogOp one: what the paper's layer-2 probe reads there)."""
    vocab = tokenizer.get_vocab()
    rows, positions, labels = [], [], []
    by_rules: dict[str, list[tuple[int, int]]] = {}  # query twins share rules, and so labels
    for row, (prompt, keep) in enumerate(zip(prompts, labelled, strict=True)):
        if keep:
            rules = prompt[:prompt.find(" facts ")]
            if rules not in by_rules:  # labels sit at rule conclusions, all before `facts`
                by_rules[rules] = [(position, vocab[label]) for position, label
                                   in enumerate(conclusion_sources(prompt)) if label is not None]
            found = by_rules[rules]
            if at_query:
                words = prompt.split()
                query = words.index("query") + 1
                named = {words[position]: label for position, label in found}
                found = [*found, (query, named[words[query]])]
            for position, label in found:
                rows.append(row)
                positions.append(position)
                labels.append(label)
    targets = torch.full((len(prompts), width), -100, dtype=torch.long)
    targets[torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long)] = torch.tensor(
        labels, dtype=torch.long)
    return targets


def source_head(n_embd: int, vocab_size: int) -> torch.nn.Module:
    """The training-only head of ``source_aux``: reads a residual stream [n, len, n_embd] and scores
    every vocabulary entry as the conclusion's source (``source_loss``)."""
    return torch.nn.Sequential(torch.nn.LayerNorm(n_embd), torch.nn.Linear(n_embd, vocab_size))


def source_loss(source_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``source_logits`` [..., vocab] over the labelled positions of
    ``targets`` [...] (for example [n, len] or the k labelled positions alone); zero (with a
    gradient) when there are none."""
    targets = targets.to(source_logits.device)
    if not bool((targets != -100).any()):
        return source_logits.sum() * 0.0
    return F.cross_entropy(source_logits.reshape(-1, source_logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
