"""The one-hop task's inductive-reasoning heads (Dutta et al. 2024 §3.2) and the shared-components
test (§4.3): do the heads that solve "Alex is sterpus. Sterpus is bitter. Alex is" -> "bitter" also
carry every chain-of-thought subtask?

Per corruption (the class, the rule's subject, the property), the first ``items`` one-hop items that
the model gets right when clean *and* that give the corruption's answer when corrupted (the paper's
selection) are patched head by head: each head's clean output written into the corrupted run at
every position, scored by the normalised KL recovery at the last position, as the subtasks are. The
three score matrices are averaged into one ranking (the authors' merge rule is not in their
repository; the mean is the brief's reading). Then, per subtask, every head outside the ranking's
top k is mean-ablated on false-ontology means (:func:`heads.sufficiency`, the heads stage's test with
the one-hop ranking in place of the subtask's own), beside random sets of the same size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from modules.analysis.generation import encode
from modules.core.params import load, param
from modules.engine.adapters import get_adapter
from modules.engine.metrics import kl_recovery_from_kl
from modules.studies.ontology.data.dataset import ONEHOP_CORRUPTIONS
from modules.studies.ontology.heads import (HeadsConfig, SubtaskExamples, _last_logits, build_examples, patch_subtask,
                                            sufficiency, top_heads)
from modules.studies.ontology.prompts import shot_blocks, target_token


@dataclass(frozen=True)
class OnehopConfig:
    items: int = param(8, range=(1, 10**6))        # per corruption, patched
    batch_size: int = param(8, range=(1, 4096))
    n_boot: int = param(1000, range=(1, 10**6))
    seed: int = param(0, range=(0, 2**32 - 1))
    threads: int = param(0, range=(0, 1024), optional=True)  # machine setting: torch's intra-op threads

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False) -> "OnehopConfig":
        return load(cls, dict(mapping), "ontology.onehop", complete=complete)


def onehop_prompt(shots: list[str], text: str) -> str:
    """The solved lines, one a line, then the test line ending in "<entity> is"."""
    return "\n".join([*shots, text])


def select_examples(model, tokenizer, onehop: pd.DataFrame, corruption: str, items: int) -> SubtaskExamples:
    """The first ``items`` rows of ``corruption`` whose clean prompt's argmax is the answer and whose
    corrupted prompt's argmax is the corruption's answer, with equal lengths in tokens; the others
    are counted by reason."""
    shots = onehop.attrs.get("shots", [])
    out = SubtaskExamples(-1, [], [], [], [], [], [], {"unequal_length": 0, "merged": 0, "wrong_clean": 0,
                                                       "corruption_not_followed": 0})
    for row in onehop[onehop["corruption"] == corruption].itertuples():
        if len(out.ids) == items:
            break
        clean_text, corrupt_text = onehop_prompt(shots, row.text), onehop_prompt(shots, row.corrupted_text)
        clean, corrupt = encode(tokenizer, clean_text), encode(tokenizer, corrupt_text)
        if len(clean) != len(corrupt):
            out.dropped["unequal_length"] += 1
            continue
        gold = target_token(encode(tokenizer, f"{clean_text} {row.target}"), clean)
        new = target_token(encode(tokenizer, f"{corrupt_text} {row.corrupted_target}"), corrupt)
        if gold is None or new is None:
            out.dropped["merged"] += 1
            continue
        argmax = _last_logits(model, torch.tensor([clean, corrupt])).argmax(-1).tolist()
        if argmax[0] != gold.token:
            out.dropped["wrong_clean"] += 1
            continue
        if argmax[1] != new.token:
            out.dropped["corruption_not_followed"] += 1
            continue
        out.ids.append(row.id)
        out.clean.append(clean)
        out.corrupt.append(corrupt)
        out.target.append(gold.token)
        out.source.append(0)
        out.segments.append([])
    return out


def subtask_rows(tables: dict[str, pd.DataFrame], behaviour: pd.DataFrame, subtask: int, config: HeadsConfig
                 ) -> pd.DataFrame:
    """A subtask's fictional rows whose next word the model gets right (the heads stage's selection)."""
    right = behaviour[behaviour["correct"].astype(bool)]
    correct = set(right["item_id"] + "/" + right["subtask"].astype(str))
    variant = config.subtask7 if subtask == 7 else "paper"
    rows = tables["subtasks"]
    rows = rows[(rows["subtask"] == subtask) & (rows["variant"] == variant) & (rows["ontology"] == "fictional")]
    return rows[(rows["item_id"] + "/" + rows["subtask"].astype(str)).isin(correct)]


def run_onehop(model, tokenizer, tables: dict[str, pd.DataFrame], behaviour: pd.DataFrame, config: OnehopConfig,
               heads_config: HeadsConfig, progress: Callable[[str], None] = lambda m: None
               ) -> tuple[dict, dict[str, Tensor]]:
    """(summary, tensors): each corruption's patching scores, the combined ranking, and per subtask
    the agreement curve when only the ranking's top heads keep their outputs."""
    if config.threads:
        torch.set_num_threads(config.threads)
    adapter = get_adapter(model)
    summary: dict = {"n_layers": adapter.n_layers, "n_heads": adapter.n_heads, "corruptions": {}, "subtasks": {}}
    tensors: dict[str, Tensor] = {}
    scores = []
    for corruption in ONEHOP_CORRUPTIONS:
        examples = select_examples(model, tokenizer, tables["onehop"], corruption, config.items)
        entry = {"n": len(examples.ids), "dropped": examples.dropped}
        progress(f"one-hop {corruption}: {len(examples.ids)} examples; head patching")
        if examples.ids:
            kl_corrupt, kl_patched = patch_subtask(model, examples, config.batch_size)
            recovery = kl_recovery_from_kl(kl_corrupt, kl_patched, on_degenerate="nan")
            ci = recovery.ci(config.n_boot, seed=config.seed)
            tensors |= {f"kl_recovery.{corruption}": recovery.score.float(),
                        f"kl_recovery_ci_low.{corruption}": ci.low.float(),
                        f"kl_recovery_ci_high.{corruption}": ci.high.float()}
            entry["top_patching"] = top_heads(recovery.score, ci.low, ci.high)
            scores.append(recovery.score.float())
        summary["corruptions"][corruption] = entry
    if not scores:
        summary["top_combined"] = []
        return summary, tensors
    combined = torch.stack(scores).nanmean(0)
    tensors["combined"] = combined
    summary["top_combined"] = top_heads(combined)
    blocks = shot_blocks(tables["shots"], "fictional", heads_config.shots)
    for s in heads_config.subtasks:
        rows = subtask_rows(tables, behaviour, s, heads_config)
        examples = build_examples(tokenizer, blocks, tables["items"], rows.head(heads_config.lens_items), s)
        if not examples.ids:
            summary["subtasks"][str(s)] = {"n": 0}
            continue
        progress(f"subtask {s}: the one-hop heads' sufficiency on {len(examples.ids)} examples")
        summary["subtasks"][str(s)] = sufficiency(model, tokenizer, tables, examples, combined, heads_config)
    return summary, tensors


def onehop_metrics(summary: dict) -> dict[str, float]:
    out = {f"{c}.n": float(e["n"]) for c, e in summary["corruptions"].items()}
    for s, entry in summary["subtasks"].items():
        if entry.get("circuit_fraction") is not None:
            out[f"subtask{s}.circuit_fraction"] = float(entry["circuit_fraction"])
    return out


def onehop_figure(tensors: dict[str, Tensor], model_name: str):
    from modules.engine.tracking import effect_heatmap

    return effect_heatmap(tensors["combined"], "layer", "head", colorbar_label="normalised KL recovery",
                          title=f"{model_name}: one-hop heads, KL recovery averaged over the three corruptions")
