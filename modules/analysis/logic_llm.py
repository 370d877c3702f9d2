"""Study 1 on pretrained LLMs: query-flip few-shot prompts through any HF causal LM.

Reproduces the Mistral-7B part of Hong et al. (2024): first-token and full-proof accuracy,
head patching (outputs, queries, keys, values) from the flipped-query prompt into the clean one,
attention statistics that sort heads into the paper's four families, and the circuit's
necessity and sufficiency under mean ablation. Works on token tensors through the engine, so the
same code runs on a tiny random Mistral in the tests and on a 7B model on a GPU.

Conventions (docs/logic_llm.md):
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
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from modules.engine import Site, capture, get_adapter, intervene, patch_head_sweep
from modules.engine.metrics import ratio_of_means_ci, wilson_ci
from modules.engine.patchscope import generate_greedy

DIRECTIONS = ("logop", "linear")
FAMILIES = ("locator", "mover", "fact_processor", "decision")
HEAD_SITES = ("head_out", "q", "k", "v")
# The heads Hong et al. name in Mistral-7B (layer, head), 0-based as in the paper.
PAPER_HEADS: dict[str, list[tuple[int, int]]] = {
    "locator": [(12, 9)], "mover": [(13, 11)], "fact_processor": [(16, 12), (16, 14)], "decision": [(19, 8)]}


class StudyError(ValueError):
    """Bad study input (no usable example, a tokenizer without offsets); one-line message."""


@dataclass
class Examples:
    """Tokenised examples; positions index the clean prompt's tokens."""
    ids: list[Tensor]                 # clean prompt ids, [seq] each
    flip_ids: list[Tensor]            # the flipped prompt, same length
    answer_ids: list[Tensor]          # the clean answer's tokens (" V is true. ...")
    correct: Tensor                   # [n] first proof token of the clean answer
    wrong: Tensor                     # [n] first proof token of the flipped answer
    query_pos: Tensor                 # [n] the query variable in the test problem's question
    conclusion_pos: Tensor            # [n] the queried rule's conclusion
    start_pos: Tensor                 # [n] the queried rule's antecedent on the proof path
    fact_pos: Tensor                  # [n] the proof's source variable in the facts section
    facts_span: Tensor                # [n, 2] token range [start, end) of the test problem's facts
    context_start: Tensor             # [n] first token of the test problem (after the shots)
    pair_id: list[str]
    direction: list[str]              # the clean prompt's query chain
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def suffix(self) -> int:
        """Tokens from the query variable to the end: the only positions where the pair differs."""
        return int(len(self.ids[0]) - self.query_pos[0])

    def subset(self, keep: Sequence[int]) -> "Examples":
        keep = list(keep)
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        index = torch.tensor(keep, dtype=torch.long)
        return Examples(pick(self.ids), pick(self.flip_ids), pick(self.answer_ids), self.correct[index],
                        self.wrong[index], self.query_pos[index], self.conclusion_pos[index],
                        self.start_pos[index], self.fact_pos[index], self.facts_span[index],
                        self.context_start[index], pick(self.pair_id), pick(self.direction), dict(self.dropped))

    def batches(self, batch_size: int):
        """Index lists of same-length examples (no padding anywhere), at most batch_size each."""
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(self.ids):
            by_length.setdefault(len(ids), []).append(i)
        for length in sorted(by_length):
            members = by_length[length]
            for start in range(0, len(members), batch_size):
                yield members[start:start + batch_size]

    def stack(self, index: list[int], flipped: bool = False) -> Tensor:
        return torch.stack([(self.flip_ids if flipped else self.ids)[i] for i in index])


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


def build_examples(pairs: pd.DataFrame, tokenizer, directions: Sequence[str] = DIRECTIONS) -> Examples:
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
    rows: dict[str, list] = {k: [] for k in ("ids", "flip_ids", "answer_ids", "correct", "wrong", "query_pos",
                                               "conclusion_pos", "start_pos", "fact_pos", "facts_span",
                                               "context_start", "pair_id", "direction")}
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
            rows["query_pos"].append(at("query"))
            rows["conclusion_pos"].append(at("conclusion"))
            rows["start_pos"].append(at("start"))
            rows["fact_pos"].append(at("fact"))
            rows["facts_span"].append((_token_at(offsets, facts[0]), _token_at(offsets, facts[1] - 1) + 1))
            rows["context_start"].append(_token_at(offsets, spans["context"]))
            rows["pair_id"].append(row.pair_id)
            rows["direction"].append(direction)
    if not rows["ids"]:
        raise StudyError(f"no usable example: {dropped}")
    tensor = lambda key: torch.tensor(rows[key], dtype=torch.long)  # noqa: E731
    examples = Examples(rows["ids"], rows["flip_ids"], rows["answer_ids"], tensor("correct"), tensor("wrong"),
                        tensor("query_pos"), tensor("conclusion_pos"), tensor("start_pos"), tensor("fact_pos"),
                        tensor("facts_span"), tensor("context_start"), rows["pair_id"], rows["direction"], dropped)
    suffixes = {len(ids) - int(q) for ids, q in zip(examples.ids, examples.query_pos)}
    if len(suffixes) != 1:
        raise StudyError(f"the question's tail tokenises to different lengths {sorted(suffixes)}; "
                         "patch positions counted from the end would not align")
    return examples


# ---------------------------------------------------------------- behaviour

def model_device(model) -> torch.device:
    return next(model.parameters()).device


def first_token_ld(logits: Tensor, correct: Tensor, wrong: Tensor) -> Tensor:
    """[batch, vocab] (or [batch, 1, vocab]) -> [batch] logit difference, in float32."""
    logits = logits.reshape(len(correct), -1).float()
    rows = torch.arange(len(correct), device=logits.device)
    return logits[rows, correct.to(logits.device)] - logits[rows, wrong.to(logits.device)]


@torch.no_grad()
def behaviour(model, examples: Examples, batch_size: int = 8) -> dict[str, Tensor]:
    """Greedy decoding of the clean prompts and the logit differences on both prompts:
    ``first_ok``, ``proof_ok`` (bool [n]), ``ld_clean``, ``ld_flip`` (float [n])."""
    n, device = len(examples), model_device(model)
    out = {"first_ok": torch.zeros(n, dtype=torch.bool), "proof_ok": torch.zeros(n, dtype=torch.bool),
           "ld_clean": torch.zeros(n), "ld_flip": torch.zeros(n)}
    for index in examples.batches(batch_size):
        answers = [examples.answer_ids[i] for i in index]
        generation = generate_greedy(model, examples.stack(index).to(device), max(len(a) for a in answers))
        tokens = generation.tokens.cpu()
        correct, wrong = examples.correct[index], examples.wrong[index]
        out["first_ok"][index] = tokens[:, 0] == correct
        out["proof_ok"][index] = torch.tensor([bool((t[:len(a)] == a).all()) for t, a in zip(tokens, answers)])
        out["ld_clean"][index] = first_token_ld(generation.logits[:, 0], correct, wrong).cpu()
        flip_logits = model(input_ids=examples.stack(index, flipped=True).to(device)).logits[:, -1]
        out["ld_flip"][index] = first_token_ld(flip_logits, correct, wrong).cpu()
    return out


def accuracy_summary(result: Mapping[str, Tensor], examples: Examples) -> dict:
    """First-token and full-proof accuracy with Wilson CIs, overall and per query direction."""
    def block(mask: Tensor) -> dict:
        entry = {"n": int(mask.sum())}
        for name in ("first_ok", "proof_ok"):
            ci = wilson_ci(int(result[name][mask].sum()), int(mask.sum()))
            entry[name.replace("_ok", "_token" if name == "first_ok" else "")] = {
                "mean": float(ci.mean), "ci_low": float(ci.low), "ci_high": float(ci.high)}
        return entry

    direction = np.array(examples.direction)
    summary = {"all": block(torch.ones(len(examples), dtype=torch.bool))}
    for d in DIRECTIONS:
        if (direction == d).any():
            summary[f"query_{d}"] = block(torch.from_numpy(direction == d))
    return summary


# ---------------------------------------------------------------- head patching

@torch.no_grad()
def head_patching(model, examples: Examples, site: str = "head_out", batch_size: int = 8,
                  max_rows: int = 512) -> Tensor:
    """Patched LD for every (layer, head) of ``site``: ``[n_layers, n_heads, n]``. Each cell
    writes the flipped run's activation into the clean run at every position from the query on."""
    if site not in HEAD_SITES:
        raise StudyError(f"site must be one of {', '.join(HEAD_SITES)}, got {site!r}")
    device, positions = model_device(model), list(range(-examples.suffix, 0))
    parts, order = [], []
    for index in examples.batches(batch_size):
        correct, wrong = examples.correct[index].to(device), examples.wrong[index].to(device)
        metric = lambda logits, c=correct, w=wrong: first_token_ld(logits, c, w)  # noqa: E731
        parts.append(patch_head_sweep(model, examples.stack(index).to(device),
                                      examples.stack(index, flipped=True).to(device), metric, site=site,
                                      positions=positions, max_rows=max(max_rows, len(index))).float().cpu())
        order += index
    values = torch.cat(parts, dim=-1)
    return values[..., torch.argsort(torch.tensor(order))]


def patching_effects(patched: Tensor, ld_clean: Tensor, ld_flip: Tensor, n_boot: int = 1000,
                     seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """mean(patched - clean) / mean(flip - clean) per cell, with its bootstrap CI."""
    numerator = (patched - ld_clean).movedim(-1, 0)
    denominator = (ld_flip - ld_clean)[:, None].expand(-1, numerator[0].numel()).reshape(numerator.shape)
    ci = ratio_of_means_ci(numerator, denominator, n_boot=n_boot, seed=seed)
    return ci.mean.float(), ci.low.float(), ci.high.float()


# ---------------------------------------------------------------- attention statistics

STATS = ("conclusion", "query", "facts", "decision_top2", "decision_share", "query_dominance")


@torch.no_grad()
def attention_stats(model, examples: Examples, batch_size: int = 8) -> dict[str, Tensor]:
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
            f0, f1 = examples.facts_span[i].tolist()
            start = int(examples.context_start[i])
            context = w[..., start:]
            top2 = context.topk(2, dim=-1).indices.sort(-1).values + start
            targets = torch.tensor(sorted((int(examples.start_pos[i]), int(examples.fact_pos[i]))))
            hit = (top2 == targets).all(-1)  # a rule token and a facts token: always two positions
            others = w.clone()
            others[..., int(examples.query_pos[i])] = 0
            out["conclusion"][i] = at(examples.conclusion_pos[i])
            out["query"][i] = at(examples.query_pos[i])
            out["facts"][i] = w[..., f0:f1].sum(-1)
            out["decision_top2"][i] = hit.float()
            out["decision_share"][i] = (at(examples.start_pos[i]) + at(examples.fact_pos[i])) / \
                context.sum(-1).clamp_min(1e-12)
            out["query_dominance"][i] = at(examples.query_pos[i]) / others.amax(-1).clamp_min(1e-12)
    return out


@dataclass(frozen=True)
class FamilyThresholds:
    """Mean attention statistics a circuit head needs to join a family (checked in this order)."""
    decision_top2: float = 0.5     # share of examples whose top-2 weights are antecedent + fact
    locator: float = 0.5           # attention on the queried rule's conclusion
    mover: float = 0.3             # attention on the query variable
    fact_processor: float = 0.5    # attention summed over the facts section


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


def select_circuit(effects: Tensor, min_effect: float, max_heads: int) -> list[tuple[int, int]]:
    """The heads whose output patching effect is at least ``min_effect``, strongest first."""
    flat = effects.flatten()
    order = flat.argsort(descending=True, stable=True)[:max_heads]
    n_heads = effects.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order if float(flat[i]) >= min_effect]


# ---------------------------------------------------------------- mean ablation

@torch.no_grad()
def head_means(model, examples: Examples, batch_size: int = 8) -> dict[int, Tensor]:
    """Mean head output over clean and flipped prompts at the question's positions:
    layer -> ``[suffix, n_heads, head_dim]``."""
    adapter, device = get_adapter(model), model_device(model)
    positions = tuple(range(-examples.suffix, 0))
    sites = [Site("head_out", layer, positions=positions) for layer in range(adapter.n_layers)]
    sums: dict[int, Tensor] = {}
    count = 0
    for index in examples.batches(batch_size):
        for flipped in (False, True):
            with capture(model, sites) as acts:
                model(input_ids=examples.stack(index, flipped).to(device))
            for site in sites:
                total = acts[site].double().sum(0)
                sums[site.layer] = sums[site.layer] + total if site.layer in sums else total
            count += len(index)
    return {layer: (total / count) for layer, total in sums.items()}


@torch.no_grad()
def ablated_ld(model, examples: Examples, heads: Sequence[tuple[int, int]], means: Mapping[int, Tensor],
               batch_size: int = 8) -> Tensor:
    """Clean-prompt LD with ``heads`` mean-ablated at the question's positions: ``[n]``."""
    device, positions = model_device(model), tuple(range(-examples.suffix, 0))
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    edits: dict[Site, Callable] = {}
    for layer, hs in by_layer.items():
        mean = means[layer][:, hs]
        edits[Site("head_out", layer, positions=positions, heads=tuple(hs))] = \
            lambda act, m=mean: m.to(act.dtype).to(act.device).expand_as(act)
    out = torch.zeros(len(examples))
    for index in examples.batches(batch_size):
        with intervene(model, edits):
            logits = model(input_ids=examples.stack(index).to(device)).logits[:, -1]
        out[index] = first_token_ld(logits, examples.correct[index], examples.wrong[index]).cpu()
    return out


def kept_share(ld: Tensor, ld_clean: Tensor, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """mean(ld) / mean(ld_clean) with its bootstrap CI, as a plain dict."""
    ci = ratio_of_means_ci(ld[:, None], ld_clean[:, None], n_boot=n_boot, seed=seed)
    return {"mean": float(ci.mean[0]), "ci_low": float(ci.low[0]), "ci_high": float(ci.high[0])}


# ---------------------------------------------------------------- the whole study

@dataclass(frozen=True)
class StudyConfig:
    batch_size: int = 8
    examples: str = "solved"          # solved: pairs answered right in both directions; all: every pair
    sites: tuple[str, ...] = HEAD_SITES
    min_effect: float = 0.05          # a head joins the circuit at this head_out patching effect
    max_heads: int = 12
    families: FamilyThresholds = FamilyThresholds()
    random_controls: int = 5          # random head sets, the circuit's size, ablated as a control
    n_boot: int = 1000
    seed: int = 0

    @classmethod
    def from_mapping(cls, params: Mapping) -> "StudyConfig":
        known = {"batch_size", "examples", "sites", "min_effect", "max_heads", "families", "random_controls",
                 "n_boot", "seed"}
        unknown = set(params) - known
        if unknown:
            raise StudyError(f"logic_llm.study: unknown keys {sorted(unknown)}; allowed {sorted(known)}")
        p = dict(params)

        def positive_int(key: str, minimum: int = 1) -> int:
            value = p.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise StudyError(f"logic_llm.study.{key} must be an int >= {minimum}, got {value!r}")
            return value

        def share(key: str, value) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise StudyError(f"logic_llm.study.{key} must be a number in [0, 1], got {value!r}")
            return float(value)

        examples = p.get("examples", cls.examples)
        if examples not in ("solved", "all"):
            raise StudyError(f"logic_llm.study.examples must be 'solved' or 'all', got {examples!r}")
        sites = tuple(p.get("sites", cls.sites))
        if not sites or "head_out" not in sites or not set(sites) <= set(HEAD_SITES):
            raise StudyError(f"logic_llm.study.sites must include head_out and be a subset of {list(HEAD_SITES)}, "
                             f"got {list(sites)}")
        families = dict(p.get("families", {}))
        bad = set(families) - set(FamilyThresholds.__dataclass_fields__)
        if bad:
            raise StudyError(f"logic_llm.study.families: unknown keys {sorted(bad)}; allowed "
                             f"{sorted(FamilyThresholds.__dataclass_fields__)}")
        thresholds = FamilyThresholds(**{k: share(f"families.{k}", v) for k, v in families.items()})
        return cls(batch_size=positive_int("batch_size"), examples=examples, sites=sites,
                   min_effect=share("min_effect", p.get("min_effect", cls.min_effect)),
                   max_heads=positive_int("max_heads"), families=thresholds,
                   random_controls=positive_int("random_controls", 0), n_boot=positive_int("n_boot"),
                   seed=positive_int("seed", 0))


@dataclass
class StudyResult:
    summary: dict                      # every reported number, JSON-ready
    tensors: dict[str, Tensor]         # effects, CIs, raw patched LDs, attention statistics
    head_table: pd.DataFrame           # one row per (layer, head)
    n_layers: int
    n_heads: int


def ci_dict(mean: float, low: float, high: float) -> dict[str, float]:
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high)}


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
    if config.examples == "solved":
        solved_pairs = {p for p in examples.pair_id} - {
            p for p, ok in zip(examples.pair_id, result["first_ok"].tolist()) if not ok}
        keep = [i for i, p in enumerate(examples.pair_id) if p in solved_pairs]
        if not keep:
            raise StudyError("the model solves no pair in both directions (first-token accuracy "
                             f"{summary['accuracy']['all']['first_token']['mean']:.3f}); set "
                             "logic_llm.study.examples to 'all' to analyse every pair")
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
    summary["patching"] = {site: _top_cells(tensors, site) for site in config.sites}

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
        rng = np.random.default_rng(config.seed)
        others = [c for c in all_heads if c not in set(circuit)]
        controls = [share([others[i] for i in rng.choice(len(others), min(len(circuit), len(others)), replace=False)])
                    for _ in range(config.random_controls)] if others else []
        if controls:
            summary["random_control"] = {"n_sets": len(controls),
                                         "mean": float(np.mean([c["mean"] for c in controls])),
                                         "min": float(min(c["mean"] for c in controls)),
                                         "max": float(max(c["mean"] for c in controls))}
    summary["necessity"] = necessity
    summary["paper_heads"] = {family: [_paper_head(layer, h, adapter, effects, stat_ci)
                                       for layer, h in heads] for family, heads in PAPER_HEADS.items()}
    table = _head_table(adapter, effects, stat_ci, families)
    return StudyResult(summary, tensors, table, adapter.n_layers, adapter.n_heads)


def _top_cells(tensors: Mapping[str, Tensor], site: str, k: int = 10) -> list[dict]:
    mean = tensors[f"effect.{site}"]
    order = mean.flatten().abs().argsort(descending=True, stable=True)[:k]
    n_heads = mean.shape[1]
    return [{"layer": int(i) // n_heads, "head": int(i) % n_heads,
             **ci_dict(mean.flatten()[i], tensors[f"effect_ci_low.{site}"].flatten()[i],
                        tensors[f"effect_ci_high.{site}"].flatten()[i])} for i in order]


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
                                                          title=f"{model_name}: attention statistic '{name}'")
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


def write_results(out_dir, summary: Mapping, tables: Mapping[str, pd.DataFrame], tensors: Mapping[str, Tensor],
                  figures: Mapping[str, object]) -> None:
    """summary.json, the CSV tables, tensors.safetensors and figures/ under ``out_dir`` (the caller
    makes it atomic). Shared by the analyses of study 1."""
    from safetensors.torch import save_file

    from modules.io import write_json

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_json(dict(summary), out / "summary.json")
    for name, table in tables.items():
        table.to_csv(out / name, index=False)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(out / "tensors.safetensors"))
    for name, figure in figures.items():
        figure.savefig(out / "figures" / name, dpi=110)


def write_study(result: StudyResult, out_dir, model_name: str, run_id: str = "") -> None:
    """summary.json, heads.csv, tensors.safetensors and figures/ under ``out_dir``."""
    write_results(out_dir, {"model": model_name, "mlflow_run_id": run_id, **result.summary},
                  {"heads.csv": result.head_table}, result.tensors, study_figures(result, model_name))


def log_study(result: StudyResult, model_name: str, dataset_hash: str, figures_dir) -> None:
    """Into the active MLflow run: metrics, summary, head table, tensors and the figures that
    :func:`write_study` saved in ``figures_dir``; one nested run per patched site (heatmap,
    effects table with CIs, tensors) through the engine's run logger."""
    import mlflow

    from modules.engine.tracking import log_engine_run
    from modules.tracking.mlflow_tracking import log_json, log_table, log_tensors

    mlflow.log_metrics(study_metrics(result.summary))
    log_json(result.summary, "summary.json")
    log_table(result.head_table, "heads.csv")
    log_tensors(result.tensors, "tensors.safetensors")
    mlflow.log_artifacts(str(figures_dir), artifact_path="figures")
    for site in result.summary["patching"]:
        ci = (result.tensors[f"effect_ci_low.{site}"], result.tensors[f"effect_ci_high.{site}"])
        log_engine_run("patching", result.tensors[f"effect.{site}"], model=model_name, dataset_hash=dataset_hash,
                       sites=[f"{site}.{layer}" for layer in range(result.n_layers)], dims=("layer", "head"),
                       ci=ci, params={"metric": "normalised logit difference, flipped -> clean",
                                      "n_examples": result.summary["n_analysed"]},
                       tensors={"patched_ld": result.tensors[f"patched_ld.{site}"]}, study="propositional-logic",
                       nested=True)
