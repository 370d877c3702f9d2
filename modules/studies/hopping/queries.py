"""Study 3's two-hop queries in one shape for both worlds (the fictional graph's held-out queries and
the curated real-world set), their token positions t1 (e1's last token) and t2 (the last token),
and the E0 evaluation: is the first hop known, the second hop, the two-hop composition?

A query is *analysable* where t1 can be traced: the prompt's tokens must end exactly where e1 ends
(a tokenizer that merges e1's last characters with what follows gives no e1 token), checked up front
instead of patching a wrong position (the authors' code silently falls back to position 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import pandas as pd

from modules.analysis.generation import generate_continuations
from modules.engine.metrics import wilson_ci
from modules.studies.hopping.matching import answer_aliases, first_entity_match, mentions

QUERY_COLUMNS = ("query_id", "prompt", "first_hop_prompt", "second_hop_prompt", "t1_text", "e1", "e2", "e3",
                 "e1_aliases", "e2_aliases", "e3_aliases", "split")


class QueryError(ValueError):
    """A query or position that cannot be analysed as asked; the message is one line."""


def world_queries(frame: pd.DataFrame) -> pd.DataFrame:
    """The curated real-world set (one row per query, world.py's columns) in QUERY_COLUMNS."""
    out = frame.rename(columns={"id": "query_id"}).copy()
    out["split"] = "world"
    for k in ("e1", "e2", "e3"):
        out[f"{k}_aliases"] = [answer_aliases(label, aliases) for label, aliases in zip(out[k], out[f"{k}_aliases"])]
    return out[list(QUERY_COLUMNS)].reset_index(drop=True)


def graph_queries(tables: Mapping[str, pd.DataFrame], splits=("test_id", "test_ood")) -> pd.DataFrame:
    """The fictional graph's two-hop queries of ``splits``, each entity named by its name and alias."""
    entities = tables["entities"].set_index("entity_id")
    names = lambda ids: [[entities.at[i, "name"]] + ([entities.at[i, "alias"]] if entities.at[i, "alias"] else [])
                         for i in ids]  # noqa: E731
    rows = tables["twohop"][tables["twohop"]["split"].isin(list(splits))]
    out = pd.DataFrame({"query_id": rows["query_id"].astype(str), "prompt": rows["prompt"],
                        "first_hop_prompt": rows["first_hop_prompt"], "second_hop_prompt": rows["second_hop_prompt"],
                        "t1_text": rows["t1_text"], "e1": rows["e1_name"], "e2": rows["e2_name"], "e3": rows["e3_name"],
                        "e1_aliases": names(rows["e1_id"]), "e2_aliases": names(rows["e2_id"]),
                        "e3_aliases": names(rows["e3_id"]), "split": rows["split"]})
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class Positions:
    ids: list[int]     # the prompt's token ids (with the model's BOS where it uses one)
    t1: int            # e1's last token
    t2: int            # the last token


def positions(tokenizer, prompt: str, t1_text: str) -> Positions:
    """The token ids of ``prompt`` and its positions t1 and t2; a QueryError where ``t1_text`` is
    not in the prompt or its end falls inside a token."""
    start = prompt.find(t1_text)
    if start < 0:
        raise QueryError(f"source position not in the prompt: {t1_text!r} does not occur in {prompt!r}")
    end = start + len(t1_text)
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    ends = [i for i, (a, b) in enumerate(offsets) if b > a and b == end]
    inside = [i for i, (a, b) in enumerate(offsets) if a < end < b]
    if inside or not ends:
        raise QueryError(f"source position not in the prompt: no token of {prompt!r} ends where {t1_text!r} does")
    return Positions(list(ids), ends[-1], len(ids) - 1)


def traceable(tokenizer, queries: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The queries whose t1 can be located, and the ids of those dropped."""
    keep, dropped = [], []
    for i, row in enumerate(queries.itertuples()):
        try:
            positions(tokenizer, row.prompt, row.t1_text)
            keep.append(i)
        except QueryError:
            dropped.append(row.query_id)
    return queries.iloc[keep].reset_index(drop=True), dropped


def answer_text(tokenizer, tokens) -> str:
    """Generated tokens as text, up to the end-of-sequence token: what follows it is not the model's
    answer (a from-scratch model trained to stop there would otherwise be scored on its rambling)."""
    tokens = [int(t) for t in tokens]
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens)


def evaluate_queries(model, tokenizer, queries: pd.DataFrame, max_new_tokens: int = 10, batch_size: int = 16,
                     progress: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """E0: greedy continuations of the first-hop, second-hop and two-hop prompts, scored by the
    paper's rule (any alias as a case-insensitive substring) and by the stricter first-entity rule."""
    out = queries[["query_id", "split", "e1", "e2", "e3"]].copy()
    for column, gold in (("first_hop", "e2_aliases"), ("second_hop", "e3_aliases"), ("composition", "e3_aliases")):
        prompts = list(queries["prompt" if column == "composition" else f"{column}_prompt"])
        texts = [answer_text(tokenizer, tokens) for tokens in
                 generate_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, progress, decode=False)]
        out[f"{column}_generation"] = texts
        out[f"{column}_correct"] = [mentions(t, a) for t, a in zip(texts, queries[gold])]
        out[f"{column}_strict"] = [first_entity_match(t, a) for t, a in zip(texts, queries[gold])]
    known = out["first_hop_correct"] & out["second_hop_correct"]
    out["subset"] = "other"
    out.loc[known & out["composition_correct"], "subset"] = "correct"
    out.loc[known & ~out["composition_correct"], "subset"] = "incorrect"   # the back-patching target set
    return out


def ci(successes: int, total: int) -> dict:
    c = wilson_ci(successes, total)
    return {"k": int(successes), "n": int(total), "mean": float(c.mean), "ci_low": float(c.low), "ci_high": float(c.high)}


def e0_summary(evaluated: pd.DataFrame) -> dict:
    """Per split (and over all): each hop's accuracy with its Wilson CI, and the subset sizes."""
    summary = {}
    for split, rows in [("all", evaluated), *evaluated.groupby("split")]:
        n = len(rows)
        summary[split] = {column: ci(int(rows[f"{column}_correct"].sum()), n)
                          for column in ("first_hop", "second_hop", "composition")}
        summary[split]["composition_strict"] = ci(int(rows["composition_strict"].sum()), n)
        summary[split]["subsets"] = {s: int((rows["subset"] == s).sum()) for s in ("correct", "incorrect", "other")}
    return summary
