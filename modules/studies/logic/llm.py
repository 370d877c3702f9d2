"""Study 1 on pretrained LLMs: query-flip few-shot prompts through any HF causal LM.

Reproduces the Mistral-7B part of Hong et al. (2024): first-token and full-proof accuracy,
head patching (outputs, queries, keys, values) from the flipped-query prompt into the clean one,
attention statistics that sort heads into the paper's four families, and the circuit's
necessity and sufficiency under mean ablation. Works on token tensors through the engine, so the
same code runs on a tiny random Mistral in the tests and on a 7B model on a GPU.

Conventions (docs/logic/llm.md):
* an *example* is one direction of a flip pair: the clean prompt queries one chain, the flipped
  prompt (same rules and facts) the other; both directions of every pair are used;
* the logit difference LD = logit(clean first proof token) - logit(flipped first proof token) at
  the last prompt position: positive on the clean prompt of a model that solves it;
* a patching effect is mean(LD_patched - LD_clean) / mean(LD_flip - LD_clean): 0 = the patch
  changes nothing, 1 = the patched run decides like the flipped prompt;
* an ablation keeps mean(LD_ablated) / mean(LD_clean) of the clean logit difference.
Ratios of means are used (not means of per-example ratios), with a bootstrap CI over examples.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from modules.core.params import load, param
from modules.analysis.outputs import log_patching_runs, log_results, write_results
from modules.analysis.pairs import (HEAD_SITES, PairExamples, StudyError, ablated_ld, behaviour, ci_dict,
                                    head_means, head_patching, kept_share, model_device, patching_effects,
                                    random_head_controls, select_circuit, top_cells)
from modules.engine import Site, capture, get_adapter
from modules.engine.metrics import wilson_ci
from modules.studies.logic import STUDY

DIRECTIONS = ("logop", "linear")
FAMILIES = ("locator", "mover", "fact_processor", "decision")
# The heads Hong et al. name in Mistral-7B (layer, head), 0-based as in the paper.
PAPER_HEADS: dict[str, list[tuple[int, int]]] = {
    "locator": [(12, 9)], "mover": [(13, 11)], "fact_processor": [(16, 12), (16, 14)], "decision": [(19, 8)]}
# Landmarks in ``PairExamples.positions``: the query variable in the test problem's question, the
# queried rule's conclusion, the queried rule's antecedent on the proof path, the proof's source
# variable in the facts section, the first token of the test problem (after the shots), and the
# token range [start, end) of its facts.
LANDMARKS = ("query", "conclusion", "start", "fact", "context", "facts")


# ---------------------------------------------------------------- prompts -> token positions

def _char_spans(prompt: str, query: str, proof: list[str]) -> dict[str, int | tuple[int, int]]:
    """Character offsets of the study's landmarks in the last line (the test problem)."""
    start = prompt.rfind("\n") + 1
    line = prompt[start:]
    rules_at, facts_at, question_at = line.index("Rules: "), line.index(" Facts: "), line.index(" Question: ")
    rules = line[rules_at:facts_at]
    concl = re.search(rf"implies {query}\.", rules)
    if concl is None:
        raise StudyError(f"no rule concludes the query {query} in {line!r}")
    rule_start = max(rules.rfind(". ", 0, concl.start()) + 2, len("Rules: "))
    antecedent = re.search(rf"\b{proof[-2]}\b", rules[rule_start:concl.start()])
    fact = re.search(rf"\b{proof[0]} is true\.", line[facts_at:question_at])
    question_query = line.rindex(f" {query}.")
    if antecedent is None or fact is None:
        raise StudyError(f"proof {proof} does not match the prompt {line!r}")
    return {"context": start, "query": start + question_query + 1,
            "conclusion": start + rules_at + concl.start() + len("implies "),
            "start": start + rules_at + rule_start + antecedent.start(),
            "fact": start + facts_at + fact.start(),
            "facts": (start + facts_at + 1, start + question_at)}


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int:
    for i, (a, b) in enumerate(offsets):
        if a <= char < b:
            return i
    raise StudyError(f"no token covers character {char}")


def build_examples(pairs: pd.DataFrame, tokenizer, directions: Sequence[str] = DIRECTIONS) -> PairExamples:
    """Tokenise both directions of every flip pair.

    A direction is dropped (and counted in ``dropped``) when its two prompts tokenise to
    different lengths or to the same tokens, when the answer's tokens do not extend the prompt's,
    or when both answers start with the same token (nothing for the query to decide).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise StudyError(f"{type(tokenizer).__name__} is not a fast tokenizer; the study needs character offsets")
    unknown = set(directions) - set(DIRECTIONS)
    if unknown or not directions:
        raise StudyError(f"directions must be a non-empty subset of {list(DIRECTIONS)}, got {list(directions)}")
    rows: dict[str, list] = {k: [] for k in ("ids", "flip_ids", "answer_ids", "correct", "wrong", "pair_id",
                                               "direction", *LANDMARKS)}
    dropped = {"length_mismatch": 0, "same_tokens": 0, "answer_not_prefix": 0, "same_first_token": 0}
    for row in pairs.itertuples(index=False):
        for direction in directions:
            other = DIRECTIONS[1 - DIRECTIONS.index(direction)]
            prompt, flipped = getattr(row, f"nl_prompt_{direction}"), getattr(row, f"nl_prompt_{other}")
            clean = tokenizer(prompt, return_offsets_mapping=True)
            flip = tokenizer(flipped)["input_ids"]
            if len(flip) != len(clean["input_ids"]):
                dropped["length_mismatch"] += 1
                continue
            if flip == clean["input_ids"]:
                dropped["same_tokens"] += 1
                continue
            full = tokenizer(prompt + " " + getattr(row, f"nl_answer_{direction}"))["input_ids"]
            full_other = tokenizer(flipped + " " + getattr(row, f"nl_answer_{other}"))["input_ids"]
            n = len(clean["input_ids"])
            if full[:n] != clean["input_ids"] or full_other[:n] != flip or len(full) <= n:
                dropped["answer_not_prefix"] += 1
                continue
            if full[n] == full_other[n]:
                dropped["same_first_token"] += 1
                continue
            proof = getattr(row, f"answer_{direction}").split()
            spans = _char_spans(prompt, getattr(row, f"query_{direction}"), proof)
            offsets = clean["offset_mapping"]
            at = lambda key: _token_at(offsets, spans[key])  # noqa: E731
            facts = spans["facts"]
            rows["ids"].append(torch.tensor(clean["input_ids"]))
            rows["flip_ids"].append(torch.tensor(flip))
            rows["answer_ids"].append(torch.tensor(full[n:]))
            rows["correct"].append(full[n])
            rows["wrong"].append(full_other[n])
            for key in ("query", "conclusion", "start", "fact", "context"):
                rows[key].append(at(key))
            rows["facts"].append((_token_at(offsets, facts[0]), _token_at(offsets, facts[1] - 1) + 1))
            rows["pair_id"].append(row.pair_id)
            rows["direction"].append(direction)
    if not rows["ids"]:
        raise StudyError(f"no usable example: {dropped}")
    tensor = lambda key: torch.tensor(rows[key], dtype=torch.long)  # noqa: E731
    examples = PairExamples(rows["ids"], rows["flip_ids"], rows["answer_ids"], tensor("correct"), tensor("wrong"),
                            tensor("query"), rows["direction"], rows["pair_id"],
                            {key: tensor(key) for key in LANDMARKS}, dropped)
    suffixes = {len(ids) - int(q) for ids, q in zip(examples.ids, examples.diverge)}
    if len(suffixes) != 1:
        raise StudyError(f"the question's tail tokenises to different lengths {sorted(suffixes)}; "
                         "patch positions counted from the end would not align")
    return examples


# ---------------------------------------------------------------- behaviour

def accuracy_summary(result: Mapping[str, Tensor], examples: PairExamples) -> dict:
    """First-token and full-proof accuracy with Wilson CIs, overall and per query direction."""
    def block(mask: Tensor) -> dict:
        entry = {"n": int(mask.sum())}
        for name in ("first_ok", "proof_ok"):
            ci = wilson_ci(int(result[name][mask].sum()), int(mask.sum()))
            entry[name.replace("_ok", "_token" if name == "first_ok" else "")] = {
                "mean": float(ci.mean), "ci_low": float(ci.low), "ci_high": float(ci.high)}
        return entry

    direction = np.array(examples.group)
    summary = {"all": block(torch.ones(len(examples), dtype=torch.bool))}
    for d in DIRECTIONS:
        if (direction == d).any():
            summary[f"query_{d}"] = block(torch.from_numpy(direction == d))
    return summary


# ---------------------------------------------------------------- attention statistics

STATS = ("conclusion", "query", "facts", "decision_top2", "decision_share", "query_dominance")


@torch.no_grad()
def attention_stats(model, examples: PairExamples, batch_size: int = 8) -> dict[str, Tensor]:
    """Per example and head, what the last position attends to: ``[n, n_layers, n_heads]`` each.

    conclusion / query / facts: attention weight on the queried rule's conclusion, on the query
    variable, and summed over the facts section; decision_top2: 1 when the two largest weights
    inside the test problem sit on the queried rule's antecedent and the source's fact variable;
    decision_share: those two weights' share of the attention inside the test problem;
    query_dominance: weight on the query over the largest other weight.
    """
    adapter, device = get_adapter(model), model_device(model)
    sites = [Site("pattern", layer, positions=(-1,)) for layer in range(adapter.n_layers)]
    out = {name: torch.zeros(len(examples), adapter.n_layers, adapter.n_heads) for name in STATS}
    for index in examples.batches(batch_size):
        with capture(model, sites) as acts:
            model(input_ids=examples.stack(index).to(device))
        weights = torch.stack([acts[s][:, :, 0].float().cpu() for s in sites], dim=1)  # [b, L, H, seq]
        for row, i in enumerate(index):
            w = weights[row]
            at = lambda pos: w[..., int(pos)]  # noqa: E731
            f0, f1 = examples.positions["facts"][i].tolist()
            start = int(examples.positions["context"][i])
            context = w[..., start:]
            top2 = context.topk(2, dim=-1).indices.sort(-1).values + start
            targets = torch.tensor(sorted((int(examples.positions["start"][i]), int(examples.positions["fact"][i]))))
            hit = (top2 == targets).all(-1)  # a rule token and a facts token: always two positions
            others = w.clone()
            others[..., int(examples.positions["query"][i])] = 0
            out["conclusion"][i] = at(examples.positions["conclusion"][i])
            out["query"][i] = at(examples.positions["query"][i])
            out["facts"][i] = w[..., f0:f1].sum(-1)
            out["decision_top2"][i] = hit.float()
            out["decision_share"][i] = (at(examples.positions["start"][i]) + at(examples.positions["fact"][i])) / \
                context.sum(-1).clamp_min(1e-12)
            out["query_dominance"][i] = at(examples.positions["query"][i]) / others.amax(-1).clamp_min(1e-12)
    return out


@dataclass(frozen=True)
class FamilyThresholds:
    """Mean attention statistics a circuit head needs to join a family (checked in this order)."""
    decision_top2: float = param(0.5, range=(0.0, 1.0))    # share of examples whose top-2 weights are antecedent + fact
    locator: float = param(0.5, range=(0.0, 1.0))          # attention on the queried rule's conclusion
    mover: float = param(0.3, range=(0.0, 1.0))            # attention on the query variable
    fact_processor: float = param(0.5, range=(0.0, 1.0))   # attention summed over the facts section


def classify_heads(stats: Mapping[str, Tensor], circuit: Sequence[tuple[int, int]],
                   thresholds: FamilyThresholds = FamilyThresholds()) -> dict[tuple[int, int], str]:
    """Each circuit head's family by its mean attention statistics, or ``unclassified``."""
    mean = {name: values.mean(0) for name, values in stats.items()}
    families = {}
    for layer, head in circuit:
        value = lambda name: float(mean[name][layer, head])  # noqa: E731
        if value("decision_top2") >= thresholds.decision_top2:
            families[(layer, head)] = "decision"
        elif value("conclusion") >= thresholds.locator:
            families[(layer, head)] = "locator"
        elif value("query") >= thresholds.mover:
            families[(layer, head)] = "mover"
        elif value("facts") >= thresholds.fact_processor:
            families[(layer, head)] = "fact_processor"
        else:
            families[(layer, head)] = "unclassified"
    return families


# ---------------------------------------------------------------- the whole study

@dataclass(frozen=True)
class StudyConfig:
    batch_size: int = param(8, range=(1, 1 << 16))
    examples: str = param("solved", choices=("solved", "all"))  # solved: pairs answered right both ways
    max_pairs: int = param(0, range=(0, 10**7))  # patch at most this many of them (0: all); accuracy uses every pair
    sites: tuple[str, ...] = param(HEAD_SITES, choices=HEAD_SITES)
    min_effect: float = param(0.05, range=(0.0, 1.0))  # a head joins the circuit at this head_out patching effect
    max_heads: int = param(12, range=(1, 10**4))
    families: FamilyThresholds = param(factory=FamilyThresholds)
    random_controls: int = param(5, range=(0, 10**4))  # random head sets, the circuit's size, ablated as a control
    n_boot: int = param(1000, range=(1, 10**7))
    seed: int = param(0, range=(0, 2**32 - 1))

    def __post_init__(self):
        if not self.sites or "head_out" not in self.sites:
            raise ValueError(f"sites must include head_out, got {list(self.sites)}")

    @classmethod
    def from_mapping(cls, params: Mapping, complete: bool = False) -> "StudyConfig":
        return load(cls, dict(params), "logic_llm.study", complete=complete)


@dataclass
class StudyResult:
    summary: dict                      # every reported number, JSON-ready
    tensors: dict[str, Tensor]         # effects, CIs, raw patched LDs, attention statistics
    head_table: pd.DataFrame           # one row per (layer, head)
    n_layers: int
    n_heads: int


def run_study(model, tokenizer, pairs: pd.DataFrame, config: StudyConfig = StudyConfig(),
              progress: Callable[[str], None] = lambda message: None) -> StudyResult:
    """Accuracy, head patching, attention statistics, families, necessity and sufficiency."""
    from modules.engine.metrics import mean_with_ci

    adapter = get_adapter(model)
    examples = build_examples(pairs, tokenizer)
    progress(f"{len(examples)} examples from {len(pairs)} pairs; decoding")
    result = behaviour(model, examples, config.batch_size)
    summary: dict = {"n_pairs": len(pairs), "n_examples": len(examples), "dropped": examples.dropped,
                     "accuracy": accuracy_summary(result, examples), "examples": config.examples,
                     "n_layers": adapter.n_layers, "n_heads": adapter.n_heads}
    keep = list(range(len(examples)))
    if config.examples == "solved":
        unsolved = {p for p, ok in zip(examples.pair_id, result["first_ok"].tolist()) if not ok}
        keep = [i for i in keep if examples.pair_id[i] not in unsolved]
        if not keep:
            raise StudyError("the model solves no pair in both directions (first-token accuracy "
                             f"{summary['accuracy']['all']['first_token']['mean']:.3f}); set "
                             "logic_llm.study.examples to 'all' to analyse every pair")
    if config.max_pairs:
        first = set(list(dict.fromkeys(examples.pair_id[i] for i in keep))[:config.max_pairs])
        keep = [i for i in keep if examples.pair_id[i] in first]
    if len(keep) < len(examples):
        examples = examples.subset(keep)
        result = {k: v[keep] for k, v in result.items()}
    n = len(examples)
    summary["n_analysed"] = n
    ld_clean, ld_flip = result["ld_clean"], result["ld_flip"]
    if float((ld_flip - ld_clean).mean()) == 0.0:
        raise StudyError("the flipped query does not change the logit difference; nothing to patch")
    ld = mean_with_ci(torch.stack([ld_clean, ld_flip], 1), n_boot=config.n_boot, seed=config.seed)
    summary["logit_diff"] = {"clean": ci_dict(ld.mean[0], ld.low[0], ld.high[0]),
                             "flipped": ci_dict(ld.mean[1], ld.low[1], ld.high[1])}

    tensors: dict[str, Tensor] = {"ld_clean": ld_clean, "ld_flip": ld_flip}
    effects: dict[str, Tensor] = {}
    for site in config.sites:
        progress(f"head patching: {site}")
        patched = head_patching(model, examples, site, config.batch_size)
        mean, low, high = patching_effects(patched, ld_clean, ld_flip, config.n_boot, config.seed)
        effects[site] = mean
        tensors |= {f"patched_ld.{site}": patched, f"effect.{site}": mean, f"effect_ci_low.{site}": low,
                    f"effect_ci_high.{site}": high}
    summary["patching"] = {site: top_cells(tensors[f"effect.{site}"], tensors[f"effect_ci_low.{site}"],
                                           tensors[f"effect_ci_high.{site}"]) for site in config.sites}

    progress("attention statistics")
    stats = attention_stats(model, examples, config.batch_size)
    stat_ci = {name: mean_with_ci(values, n_boot=config.n_boot, seed=config.seed) for name, values in stats.items()}
    for name, ci in stat_ci.items():
        tensors |= {f"attention.{name}": ci.mean.float(), f"attention_ci_low.{name}": ci.low.float(),
                    f"attention_ci_high.{name}": ci.high.float()}

    circuit = select_circuit(effects["head_out"], config.min_effect, config.max_heads)
    families = classify_heads(stats, circuit, config.families)
    head = lambda layer, h: {"layer": layer, "head": h, "effect": float(effects["head_out"][layer, h]),  # noqa: E731
                             **{name: float(stat_ci[name].mean[layer, h]) for name in STATS}}
    summary["circuit"] = [{**head(layer, h), "family": families[(layer, h)]} for layer, h in circuit]

    progress("mean ablations")
    means = head_means(model, examples, config.batch_size)
    share = lambda heads: kept_share(ablated_ld(model, examples, heads, means, config.batch_size),  # noqa: E731
                                     ld_clean, config.n_boot, config.seed)
    all_heads = [(layer, h) for layer in range(adapter.n_layers) for h in range(adapter.n_heads)]
    necessity = {family: share([c for c in circuit if families[c] == family])
                 for family in FAMILIES + ("unclassified",) if any(families[c] == family for c in circuit)}
    if circuit:
        necessity["circuit"] = share(circuit)
        summary["sufficiency"] = share([c for c in all_heads if c not in set(circuit)])
        control = random_head_controls(share, circuit, all_heads, config.random_controls, config.seed)
        if control:
            summary["random_control"] = control
    summary["necessity"] = necessity
    summary["paper_heads"] = {family: [_paper_head(layer, h, adapter, effects, stat_ci)
                                       for layer, h in heads] for family, heads in PAPER_HEADS.items()}
    table = _head_table(adapter, effects, stat_ci, families)
    return StudyResult(summary, tensors, table, adapter.n_layers, adapter.n_heads)


def _paper_head(layer: int, head: int, adapter, effects: Mapping[str, Tensor], stat_ci) -> dict:
    if layer >= adapter.n_layers or head >= adapter.n_heads:
        return {"layer": layer, "head": head, "exists": False}
    return {"layer": layer, "head": head, "exists": True, "effect": float(effects["head_out"][layer, head]),
            **{name: ci_dict(ci.mean[layer, head], ci.low[layer, head], ci.high[layer, head])
               for name, ci in stat_ci.items()}}


def _head_table(adapter, effects: Mapping[str, Tensor], stat_ci, families) -> pd.DataFrame:
    rows = []
    for layer in range(adapter.n_layers):
        for h in range(adapter.n_heads):
            row = {"layer": layer, "head": h, "family": families.get((layer, h), "")}
            row["effect.head_out"] = float(effects["head_out"][layer, h])
            row["effect.q"] = float(effects["q"][layer, h]) if "q" in effects else float("nan")
            for kv in ("k", "v"):  # key/value heads: the one this query head reads
                if kv in effects:
                    group = adapter.n_heads // effects[kv].shape[1]
                    row[f"effect.{kv}"] = float(effects[kv][layer, h // group])
            for name, ci in stat_ci.items():
                row[f"attention.{name}"] = float(ci.mean[layer, h])
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- outputs

FIGURE_STATS = ("conclusion", "query", "facts", "decision_top2")


def study_figures(result: StudyResult, model_name: str) -> dict[str, "object"]:
    """Heatmaps (layer x head): one per patched site and one per family statistic."""
    from modules.engine.tracking import effect_heatmap

    figures = {}
    for site in result.summary["patching"]:
        title = f"{model_name}: patching {site} (flipped -> clean), normalised effect"
        figures[f"patching_{site}.png"] = effect_heatmap(result.tensors[f"effect.{site}"], "layer",
                                                         "key/value head" if site in ("k", "v") else "head",
                                                         title=title)
    for name in FIGURE_STATS:
        figures[f"attention_{name}.png"] = effect_heatmap(result.tensors[f"attention.{name}"], "layer", "head",
                                                          title=f"{model_name}: attention statistic '{name}'",
                                                          scale="unit")  # weights and shares, all in [0, 1]
    return figures


def study_metrics(summary: Mapping) -> dict[str, float]:
    """The headline numbers, flat, for `dvc metrics show` and MLflow."""
    accuracy = summary["accuracy"]["all"]
    metrics = {"first_token_accuracy": accuracy["first_token"]["mean"], "proof_accuracy": accuracy["proof"]["mean"],
               "n_examples": float(summary["n_examples"]), "n_analysed": float(summary["n_analysed"]),
               "ld_clean": summary["logit_diff"]["clean"]["mean"], "circuit_heads": float(len(summary["circuit"]))}
    if "sufficiency" in summary:
        metrics["sufficiency"] = summary["sufficiency"]["mean"]
    for name, share in summary["necessity"].items():
        metrics[f"necessity.{name}"] = share["mean"]
    return metrics


def write_study(result: StudyResult, out_dir, model_name: str, run_id: str = "") -> None:
    """summary.json, heads.csv, tensors.safetensors and figures/ under ``out_dir``."""
    write_results(out_dir, {"model": model_name, "mlflow_run_id": run_id, **result.summary},
                  {"heads.csv": result.head_table}, result.tensors, study_figures(result, model_name))


def log_study(result: StudyResult, model_name: str, dataset_hash: str, figures_dir) -> None:
    """Into the active MLflow run: metrics, summary, head table, tensors and the figures that
    :func:`write_study` saved in ``figures_dir``; one nested run per patched site."""
    log_results(study_metrics(result.summary), result.summary, {"heads.csv": result.head_table}, result.tensors,
                figures_dir)
    log_patching_runs(result.tensors, {site: ("layer", "head") for site in result.summary["patching"]},
                      model=model_name, dataset_hash=dataset_hash, n_layers=result.n_layers,
                      n_examples=result.summary["n_analysed"], study=STUDY,
                      metric="normalised logit difference, flipped -> clean")
