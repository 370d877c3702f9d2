"""reports/hopping/README.md: study 3's results per model next to the paper's claims, generated from
the stages' outputs (every number comes from a logged MLflow run; none is typed here but the paper's),
and its figures: (ℓs, ℓt) heatmaps and the stage box plot."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import Tensor

from modules.analysis.report import markdown_table, pct_ci, verdict
from modules.studies.hopping.layers import STAGES
from modules.studies.hopping.params import GRAPH_MODEL, HoppingParams

# Biran et al. 2024: the oracle back-patching rate on the queries a model gets wrong (abstracts), and
# the range a third party reports across models and positions.
PAPER_ORACLE = {"arXiv v1": 0.57, "EMNLP": 0.66}
PAPER_RANGE = (0.32, 0.66)
PAPER_MODELS = "LLaMA-2 7B/13B, LLaMA-3 8B/70B"
# A readout whose patched generations differ from the unpatched target's in under 5% (CI upper bound)
# cannot place e2 or e3 at a layer; the claims read from it are then not testable.
READOUT_MIN_CHANGED = 0.05
MIN_REACHED = 3   # queries that must reach a stage before its median layer gets a verdict
E1_CLAIMS = [("e2 resolved early at t1", "early layers"), ("second hop resolved later, at t2", "later layers"),
             ("failures resolve the first hop later", "later in incorrect cases")]


def layer_heatmap(grid: Tensor, title: str) -> Figure:
    """A [source layer, target layer] share in [0, 1] (blank where not run)."""
    values = grid.detach().float().cpu().numpy()
    fig = Figure(figsize=(min(2.5 + 0.25 * values.shape[1], 12), min(2 + 0.25 * values.shape[0], 10)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, origin="lower",
                      aspect="auto", interpolation="nearest")
    ax.set_xlabel("target layer ℓt")
    ax.set_ylabel("source layer ℓs")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def stage_boxplot(stages: pd.DataFrame, name: str) -> Figure:
    """The paper's four-stage box plot: each stage's layer for correct and incorrect queries."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    data, labels, colours = [], [], []
    for stage in STAGES:
        for subset, colour in (("correct", "tab:green"), ("incorrect", "tab:red")):
            data.append(stages.loc[stages["subset"] == subset, stage].dropna().to_numpy())
            labels.append(f"{stage.replace('_', ' ')}\n{subset}")
            colours.append(colour)
    boxes = ax.boxplot([d if len(d) else [np.nan] for d in data], patch_artist=True)
    for patch, colour in zip(boxes["boxes"], colours):
        patch.set_facecolor(colour)
        patch.set_alpha(0.4)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=6)
    ax.set_ylabel("layer")
    ax.set_title(f"{name}: where each stage happens (n correct {int((stages['subset'] == 'correct').sum())}, "
                 f"incorrect {int((stages['subset'] == 'incorrect').sum())})", fontsize=9)
    fig.tight_layout()
    return fig


def _e0(name: str, e: Mapping) -> list[str]:
    rows = []
    for split, entry in e.items():
        if not isinstance(entry, dict) or "first_hop" not in entry:
            continue
        subsets = entry["subsets"]
        rows.append([split, pct_ci(entry["first_hop"]), pct_ci(entry["second_hop"]), pct_ci(entry["composition"]),
                     pct_ci(entry["composition_strict"]), str(entry["first_hop"]["n"]),
                     f"{subsets['incorrect']} / {subsets['correct']}"])
    lines = [f"E0 (run `{e['mlflow_run_id']}`): greedy, 10 tokens, an alias of the gold entity anywhere in "
             f"the continuation (the paper's rule); *strict*: the continuation starts with it. "
             f"{e['queries']} queries, {len(e['untraceable'])} untraceable (no token ends where e1 does).", ""]
    lines += markdown_table(["queries", "first hop", "second hop", "two-hop", "two-hop (strict)", "n",
                             "both hops known: wrong / right"], rows)
    return lines


def _rate(entry: Mapping | None) -> str:
    if not entry or not entry.get("n"):
        return "n = 0"
    return f"{pct_ci(entry)}, n = {entry['n']}"


def _backpatch(b: Mapping) -> list[str]:
    lines = [f"E5 (run `{b['mlflow_run_id']}`): {b['incorrect']['n_queries']} queries with both hops known and "
             f"the two-hop wrong, {b['correct']['n_queries']} with it right; {b['n_layers']} layers.", ""]
    rows = []
    for position in ("t1", "t2", "either"):
        entry = b["incorrect"].get(position)
        if not entry:
            continue
        best = entry.get("best_pair_in_sample")
        rows.append([position, _rate(entry["oracle"]), _rate(entry.get("forward_oracle")),
                     _rate(entry.get("mismatched_oracle")), _rate(entry.get("best_pair_held_out")),
                     f"{100 * best['rate']:.1f}% at {tuple(best['pair'])}" if best else "-",
                     _rate(entry["per_pair_mean"]), _rate(entry.get("identity_same_as_baseline"))])
    lines += markdown_table(["position", "oracle (ℓs > ℓt)", "forward oracle (ℓs < ℓt)", "mismatched source oracle",
                             "best fixed pair, held out", "best fixed pair, in sample", "mean over pairs",
                             "identity = baseline"], rows)
    correct = b["correct"]
    if correct["n_queries"]:
        lines += ["", "On the queries the model gets right: " + "; ".join(
            f"{p}: still right under some back-patch {_rate(correct[p]['oracle'])}, mean share of pairs that break "
            f"it {_rate(correct[p].get('break_rate'))}" for p in ("t1", "t2") if p in correct)]
    return lines


def _too_few(stage: Mapping, what: str = "") -> str | None:
    """A median layer over fewer than MIN_REACHED queries decides nothing."""
    if stage["n_reached"] < MIN_REACHED:
        return f"inconclusive ({what}reached in {stage['n_reached']} of {stage['n']})"
    return None


def _claims(name: str, result: Mapping, n_layers: int | None) -> list[list[str]]:
    rows = []
    layers = result.get("layers")
    readout = (layers or {}).get("readout", {}).get("changed", {})
    # E1's layers mean something only where the patched state changes the readout's generation (runs
    # from before this control have no "readout" and are read as they were)
    readable = "readout" not in (layers or {}) or (bool(readout.get("n")) and readout["ci_high"] >= READOUT_MIN_CHANGED)
    if readout.get("n"):
        rows.append(["(control) the Patchscope readout depends on the patched state", "not tested",
                     f"patched generations that differ from the target prompt's own: {_rate(readout)}",
                     "informative" if readable else "uninformative: E1's layers are not measured"])
    if layers and not readable:
        rows += [[claim, paper, "no readout", "not testable"] for claim, paper in E1_CLAIMS]
    elif layers:
        stages = layers["stages"]
        first, second = stages["first_hop_resolved"], stages["second_hop_resolved"]
        c = first["correct"]
        depth = f"{c['median']:.0f} of {n_layers}" if c["median"] is not None else "never"
        early = c["median"] is not None and c["median"] < n_layers / 2
        rows.append(["e2 resolved early at t1", "early layers", f"median first e2 layer {depth} "
                     f"(reached in {c['n_reached']} of {c['n']} correct queries)",
                     _too_few(c) or ("consistent" if early else "not reproduced")])
        s = second["correct"]
        later = s["median"] is not None and c["median"] is not None and s["median"] > c["median"]
        rows.append(["second hop resolved later, at t2", "later layers",
                     f"median first e3 layer from t2: {s['median'] if s['median'] is not None else 'never'} "
                     f"({s['n_reached']} of {s['n']})",
                     _too_few(s) or _too_few(c, "e2 from t1 ") or ("consistent" if later else "not reproduced")])
        gap = first.get("incorrect_minus_correct")
        rows.append(["failures resolve the first hop later", "later in incorrect cases",
                     f"incorrect - correct: {gap['mean']:+.1f} layers (95% CI {gap['ci_low']:+.1f} to "
                     f"{gap['ci_high']:+.1f})" if gap else "too few queries reach it",
                     ("reproduced" if gap["ci_low"] > 0 else "not reproduced" if gap["ci_high"] < 0 else "inconclusive")
                     if gap else "inconclusive"])
    b = result.get("backpatch")
    if b and b["incorrect"]["n_queries"]:
        either = b["incorrect"]["either"]["oracle"]
        rows.append(["a back-patch fixes many incorrect cases (oracle)",
                     f"up to 57% (arXiv v1) / 66% (EMNLP); {PAPER_RANGE[0]:.0%}-{PAPER_RANGE[1]:.0%} across models",
                     _rate(either), verdict(either, PAPER_RANGE[0], above=True)])
        mismatched = b["incorrect"]["either"].get("mismatched_oracle")
        if mismatched and mismatched.get("n"):
            specific = either["ci_low"] > mismatched["ci_high"]
            rows.append(["(control) the oracle needs the query's own state", "not tested",
                         f"mismatched source {_rate(mismatched)}",
                         "specific" if specific else "not distinguishable from a mismatched source"])
    return rows


def render_report(params: HoppingParams, results: Mapping[str, Mapping], training: Mapping | None,
                  gpu: bool = False) -> str:
    stage = "`hopping_gpu_report` stage of `pipelines/llm/dvc.yaml`" if gpu else \
        "`report_hopping` stage of `pipelines/hopping/dvc.yaml`"
    sizes = "ours are the 7B models below" if gpu else "ours are far smaller (below)"
    lines = ["# Study 3: hopping too late (Biran et al. 2024)" + (", 7B models" if gpu else ""), "",
             f"Generated by the {stage} from the stages' outputs; "
             "every number comes from the MLflow run named beside it (experiment `hopping-too-late`). "
             f"The paper's models are {PAPER_MODELS}; {sizes}, so a claim that does not "
             "hold here is reported as such, not tuned until it does. Methods: docs/hopping/study.md.", ""]
    if training:
        lines += ["## The from-scratch model", "",
                  f"Trained {training['steps']} steps in {training['wall_s']:.0f} s (run `{training['mlflow_run_id']}`): "
                  + ", ".join(f"{k.replace('_exact_match', '')} {100 * v:.1f}%" for k, v in training.items()
                              if k.endswith("_exact_match")) + " exact match (the last validation).", ""]
    for name, result in results.items():
        world = "fictional knowledge graph, held-out two-hop queries" if name == GRAPH_MODEL else "curated real-world set"
        lines += [f"## {name} ({world})", ""]
        lines += _e0(name, result["evaluate"]) + [""]
        n_layers = (result.get("backpatch") or result.get("layers") or {}).get("n_layers")
        claims = _claims(name, result, n_layers)
        if claims:
            lines += ["### Claims", ""] + markdown_table(["claim", "paper", "ours", "verdict"], claims) + [""]
        if "backpatch" in result:
            lines += ["### Back-patching (E5) and its controls", ""] + _backpatch(result["backpatch"]) + [""]
            lines += [f"![back-patching t1](figures/{name}/backpatch/backpatch_t1.png)",
                      f"![back-patching t2](figures/{name}/backpatch/backpatch_t2.png)", ""]
        if "layers" in result:
            lay = result["layers"]
            lines += ["### Where the hops happen (E1-E4)", "",
                      f"Run `{lay['mlflow_run_id']}`. Patchscope target prompt: `{lay['target_prompt']}`"
                      + (f" (alone it continues `{lay['target_generation']}`)" if "target_generation" in lay else "")
                      + ". Share of "
                      f"knockouts (last -> t1, window ±{lay['knockout_window']}) that change the answer, by layer: "
                      + ", ".join(f"{v:.2f}" for v in lay["knockout_changed_by_layer"]) + ".", "",
                      f"![stages](figures/{name}/layers/stages.png)",
                      f"![e2 from t1](figures/{name}/layers/description_t1_e2.png)",
                      f"![e3 from t2](figures/{name}/layers/description_t2_e3.png)", ""]
    return "\n".join(lines) + "\n"
