"""Where each hop happens (the paper's §3.1-3.4), per query of the correct and incorrect subsets:

- E1, the entity-description Patchscope: the block-ℓs state at t1 (or t2) written at block ℓt into
  the placeholder of a description prompt; the generation is classified e1 > e2 > e3 > other, and a
  hop counts as resolved at the smallest ℓs with any ℓt (and any seed) giving its entity;
- E2, attention knockout: the last token may not attend to t1 in a window of 2k + 1 layers around ℓ
  (prompt pass only); the first ℓ that changes the answer;
- E3, the sublayer lens at the last position: the first layer whose attention output ranks a first
  token of e2 on top, and the first whose MLP output ranks the model's own next token on top;
- E4, the four stages per query: 1st hop resolved (E1, e2 from t1), information propagated (the mean
  of E2's first change, E3's first attention-e2 layer and E1's first e2 from t2), 2nd hop resolved
  (E1, e3 from t2), prediction extracted (E3's first MLP-prediction layer).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from modules.core.params import load, param
from modules.engine.adapters import get_adapter
from modules.engine.interventions import knockout
from modules.engine.lens import sublayer_ranks
from modules.engine.patchscope import generate_greedy, patchscope_grid
from modules.studies.hopping.matching import classify_description, mentions
from modules.studies.hopping.queries import answer_text, positions

# The paper's target prompt (the authors' code), its placeholder the last "x"
PAPER_TARGET = ("Syria: Syria is a country in the Middle East, Leonardo DiCaprio: Leonardo DiCaprio is an American "
                "actor, Samsung: Samsung is a South Korean multinational corporation, x")
CLASSIFIERS = ("paper", "mention")
# transformers' default sampling (the paper samples with it): top-k 50 at temperature 1
SAMPLING_TOP_K = 50
STAGES = ("first_hop_resolved", "info_propagation", "second_hop_resolved", "prediction_extracted")


@dataclass(frozen=True)
class LayersConfig:
    items: int = param(16, range=(0, 10**6))          # per subset (correct, incorrect)
    target_prompt: str = param(PAPER_TARGET)
    placeholder: str = param("x")                      # its last occurrence is the patched position
    classifier: str = param("paper", choices=CLASSIFIERS)
    target_stride: int = param(1, range=(1, 1024))     # every k-th target layer (1: the paper's full grid)
    samples: tuple[int, ...] = param(())                         # sampling seeds (the paper: 0, 1, 2); empty: greedy
    max_new_tokens: int = param(10, range=(1, 256))
    knockout_window: int = param(3, range=(0, 64))     # k: layers ℓ-k .. ℓ+k
    batch_size: int = param(32, range=(1, 4096))
    threads: int = param(0, range=(0, 1024), optional=True)

    @classmethod
    def from_mapping(cls, mapping, complete: bool = False, where: str = "hopping.layers") -> "LayersConfig":
        return load(cls, dict(mapping), where, complete=complete)


def placeholder_position(tokenizer, prompt: str, placeholder: str) -> int:
    """The token of ``prompt`` that ends where its last ``placeholder`` does."""
    end = prompt.rfind(placeholder)
    if end < 0:
        raise ValueError(f"layers.target_prompt {prompt!r} has no placeholder {placeholder!r}")
    return positions(tokenizer, prompt, prompt[:end + len(placeholder)]).t1


def description_class(text: str, aliases: dict[str, list[str]], classifier: str) -> str:
    if classifier == "paper":
        return classify_description(text, aliases)
    return next((name for name, values in aliases.items() if mentions(text, values)), "other")


def patchscope_rows(model, tokenizer, query, config: LayersConfig, target_ids: torch.Tensor,
                    target_position: int, target_generation: str) -> list[dict]:
    n_layers = get_adapter(model).n_layers
    targets = list(range(0, n_layers, config.target_stride))
    pairs = [(s, t) for s in range(n_layers) for t in targets]
    where = positions(tokenizer, query.prompt, query.t1_text)
    aliases = {"e1": query.e1_aliases, "e2": query.e2_aliases, "e3": query.e3_aliases}
    rows = []
    for name, position in (("t1", where.t1), ("t2", where.t2)):
        for seed in (config.samples or (None,)):
            tokens = patchscope_grid(model, torch.tensor([where.ids]), position, target_ids, target_position, pairs,
                                     max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                     sample=seed is not None, seed=seed or 0,
                                     top_k=SAMPLING_TOP_K if seed is not None else None).tokens
            for (ls, lt), row in zip(pairs, tokens):
                text = answer_text(tokenizer, row)
                rows.append({"query_id": query.query_id, "position": name, "source_layer": ls, "target_layer": lt,
                             "seed": -1 if seed is None else int(seed), "generation": text,
                             "class": description_class(text, aliases, config.classifier),
                             "same_as_target": text == target_generation})
    return rows


def knockout_rows(model, tokenizer, query, config: LayersConfig) -> list[dict]:
    """Per layer ℓ: the answer with last -> t1 blocked in layers ℓ-k .. ℓ+k during the prompt pass."""
    n_layers = get_adapter(model).n_layers
    where = positions(tokenizer, query.prompt, query.t1_text)
    ids = torch.tensor([where.ids])
    vanilla = answer_text(tokenizer, generate_greedy(model, ids, config.max_new_tokens).tokens[0])
    vanilla_ok = mentions(vanilla, query.e3_aliases)
    rows = []
    for layer in range(n_layers):
        window = range(max(0, layer - config.knockout_window), min(n_layers, layer + config.knockout_window + 1))
        blocked = knockout(model, window, [(where.t2, where.t1)])
        text = answer_text(tokenizer, generate_greedy(model, ids, config.max_new_tokens,
                                                      prompt_contexts=[blocked]).tokens[0])
        ok = mentions(text, query.e3_aliases)
        rows.append({"query_id": query.query_id, "layer": layer, "generation": text, "vanilla": vanilla,
                     "changed": not ((vanilla_ok and ok) or text == vanilla)})
    return rows


def first_tokens(tokenizer, aliases: list[str]) -> list[int]:
    """The first token of each alias, written alone and after a space (BOS dropped)."""
    bos = tokenizer.bos_token_id
    found = []
    for alias in aliases:
        for text in (alias, " " + alias, alias.lower(), " " + alias.lower()):
            try:
                ids = [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i != bos]
            except Exception:  # a closed word-level vocabulary has no lower-case variant: skip it
                continue
            if ids and ids[0] not in found:
                found.append(ids[0])
    return found


def lens_row(model, tokenizer, query) -> dict:
    where = positions(tokenizer, query.prompt, query.t1_text)
    ids = torch.tensor([where.ids])
    e2 = first_tokens(tokenizer, query.e2_aliases)
    with torch.no_grad():
        predicted = int(model(input_ids=ids).logits[0, -1].argmax())
    ranks = sublayer_ranks(model, ids, e2 + [predicted], position=where.t2)
    attn_e2 = (ranks["attn_out"][:, :len(e2)] == 0).any(1)      # [layers]
    mlp_pred = ranks["mlp_out"][:, len(e2)] == 0
    first = lambda hits: int(hits.nonzero()[0, 0]) if bool(hits.any()) else None  # noqa: E731
    return {"query_id": query.query_id, "attention_e2_layers": attn_e2.nonzero()[:, 0].tolist(),
            "mlp_prediction_layers": mlp_pred.nonzero()[:, 0].tolist(),
            "first_attention_e2": first(attn_e2), "first_mlp_prediction": first(mlp_pred)}


def target_continuation(model, tokenizer, config: LayersConfig) -> str:
    """The target prompt's own greedy continuation: a readout whose patched generations all equal it
    carries nothing of the patched state (the control behind :func:`readout_summary`)."""
    ids = torch.tensor([tokenizer(config.target_prompt)["input_ids"]])
    return answer_text(tokenizer, generate_greedy(model, ids, config.max_new_tokens).tokens[0])


def run_layers(model, tokenizer, queries: pd.DataFrame, evaluated: pd.DataFrame, config: LayersConfig,
               progress: Callable[[str], None] = lambda m: None) -> dict[str, pd.DataFrame]:
    """E1-E3's long tables for up to ``config.items`` queries of each subset."""
    subset = evaluated.set_index("query_id")["subset"]
    chosen = pd.concat([queries[queries["query_id"].map(subset) == s].head(config.items)
                        for s in ("correct", "incorrect")])
    target = tokenizer(config.target_prompt)["input_ids"]
    target_position = placeholder_position(tokenizer, config.target_prompt, config.placeholder)
    target_ids = torch.tensor([target])
    target_generation = target_continuation(model, tokenizer, config)
    patch, knock, lens = [], [], []
    for done, query in enumerate(chosen.itertuples()):
        patch += patchscope_rows(model, tokenizer, query, config, target_ids, target_position, target_generation)
        knock += knockout_rows(model, tokenizer, query, config)
        lens.append(lens_row(model, tokenizer, query))
        progress(f"layers: {done + 1} of {len(chosen)} queries")
    tables = {name: pd.DataFrame(rows, columns=list(LAYER_COLUMNS[name]))
              for name, rows in (("patchscope", patch), ("knockout", knock), ("lens", lens))}
    for frame in tables.values():
        frame.insert(1, "subset", frame["query_id"].map(subset))
    return tables


LAYER_COLUMNS = {
    "patchscope": ("query_id", "position", "source_layer", "target_layer", "seed", "generation", "class",
                   "same_as_target"),
    "knockout": ("query_id", "layer", "generation", "vanilla", "changed"),
    "lens": ("query_id", "attention_e2_layers", "mlp_prediction_layers", "first_attention_e2", "first_mlp_prediction"),
}


def _first_layer(frame: pd.DataFrame, queries: list[str]) -> pd.Series:
    if frame.empty:  # no query reaches it (or none was analysed)
        return pd.Series(np.nan, index=pd.Index(queries, name="query_id"), dtype=float)
    return frame.groupby("query_id")["source_layer" if "source_layer" in frame else "layer"].min().reindex(queries)


def stage_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """E4: one row per query with its subset and the four stage layers (NaN where never reached)."""
    lens = tables["lens"].set_index("query_id")
    queries = list(lens.index)
    patch, knock = tables["patchscope"], tables["knockout"]
    e2_t1 = _first_layer(patch[(patch["position"] == "t1") & (patch["class"] == "e2")], queries)
    e2_t2 = _first_layer(patch[(patch["position"] == "t2") & (patch["class"] == "e2")], queries)
    e3_t2 = _first_layer(patch[(patch["position"] == "t2") & (patch["class"] == "e3")], queries)
    changed = _first_layer(knock[knock["changed"].astype(bool)], queries)
    attention = lens["first_attention_e2"].astype(float)
    stacked = np.vstack([changed.to_numpy(float), attention.to_numpy(float), e2_t2.to_numpy(float)])
    with warnings.catch_warnings():  # a query with none of the three is NaN, as in the paper's nanmean
        warnings.simplefilter("ignore", RuntimeWarning)
        propagation = np.nanmean(stacked, 0) if queries else []
    return pd.DataFrame({"query_id": queries, "subset": lens["subset"].to_numpy(),
                         "first_hop_resolved": e2_t1.to_numpy(float), "info_propagation": propagation,
                         "second_hop_resolved": e3_t2.to_numpy(float),
                         "prediction_extracted": lens["first_mlp_prediction"].astype(float).to_numpy(),
                         "first_knockout_change": changed.to_numpy(float), "first_e2_from_t2": e2_t2.to_numpy(float)})


def description_grids(patch: pd.DataFrame, n_layers: int) -> dict[str, torch.Tensor]:
    """``[n_layers, n_layers]`` share of generations classified e2 (from t1, t2) and e3 (from t2) per
    (ℓs, ℓt), over every query and seed (NaN where a target layer was skipped)."""
    grids = {}
    for position, entity in (("t1", "e2"), ("t2", "e2"), ("t2", "e3")):
        grid = torch.full((n_layers, n_layers), float("nan"))
        at = patch[patch["position"] == position]
        if len(at):
            share = (at["class"] == entity).groupby([at["source_layer"], at["target_layer"]]).mean()
            for (ls, lt), value in share.items():
                grid[int(ls), int(lt)] = float(value)
        grids[f"description_{position}_{entity}"] = grid
    return grids


def readout_summary(patch: pd.DataFrame) -> dict:
    """How often a patched Patchscope generation differs from the target prompt's own (Wilson CI over
    generations, which share queries): near zero, the readout cannot show where an entity is decodable."""
    from modules.studies.hopping.queries import ci

    changed = int((~patch["same_as_target"].astype(bool)).sum())
    return {"changed": ci(changed, len(patch)) if len(patch) else {"k": 0, "n": 0},
            "queries": int(patch["query_id"].nunique())}


def stage_summary(stages: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per stage and subset: how many queries reach it, its mean and median layer; and the paper's
    "too late" contrast, incorrect minus correct mean first-hop layer with a bootstrap CI."""
    out: dict = {}
    for stage in STAGES:
        entry = {}
        for subset in ("correct", "incorrect"):
            values = stages.loc[stages["subset"] == subset, stage].dropna()
            entry[subset] = {"n_reached": int(len(values)), "n": int((stages["subset"] == subset).sum()),
                             "mean": float(values.mean()) if len(values) else None,
                             "median": float(values.median()) if len(values) else None}
        a = stages.loc[stages["subset"] == "incorrect", stage].dropna().to_numpy()
        b = stages.loc[stages["subset"] == "correct", stage].dropna().to_numpy()
        if len(a) >= 2 and len(b) >= 2:
            rng = np.random.default_rng(seed)
            boot = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n_boot)]
            entry["incorrect_minus_correct"] = {"mean": float(a.mean() - b.mean()),
                                                "ci_low": float(np.quantile(boot, 0.025)),
                                                "ci_high": float(np.quantile(boot, 0.975))}
        out[stage] = entry
    return out
