"""Patching benchmark on a real LM: this engine against TransformerLens 4.3 and nnsight 0.8 (and
the naive hook loop) on the real SmolLM2-135M weights (artifacts/models/smollm2-135m, imported by
modules.lms), the same prompts, in one run: the residual-stream layer x position sweep and the
layer x head sweep (head outputs, all positions). Prints median times over repetitions, each
tool's time over the engine's, the engine's speed-up over the faster anchor (TransformerLens or
nnsight), and the largest disagreement with the engine's per-cell values.

Prompts (``--prompts``):

* ``minimal``: indirect-object minimal pairs; source and target differ only in the name at one
  position (the usual patching setup). Patches at earlier positions cannot change anything.
* ``random``: source prompts of random tokens (nothing shared with the target), the worst case.

The metric is the batch-mean logit difference " John" - " Mary" at the last position, reusing
``benchmarks.bench_patching`` (its tool runners, timing and FLOP floor).

Run: ``python -m benchmarks.bench_real_lm`` (after the model is imported); ``--out`` writes JSON.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from benchmarks import bench_patching as bp  # noqa: E402
from modules.engine.adapters import load_model  # noqa: E402
from modules.lms.registry import check_model_dir, read_manifest, verify_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "artifacts" / "models" / "smollm2-135m"
TOOLS = ("engine", "naive", "transformerlens", "nnsight")
ANCHORS = ("transformerlens", "nnsight")
NAMES = {"engine": "this engine", "naive": "naive hook loop", "transformerlens": "TransformerLens 4.3",
         "nnsight": "nnsight 0.8 (32 invokes a trace)"}
# Target prompts name Mary as the giver (answer: John); the source names John (answer: Mary).
TEMPLATES = ["When Mary and John went to the store, {} gave a drink to",
             "When Mary and John went to the park, {} gave a ball to",
             "When Mary and John went to the beach, {} gave a towel to",
             "When Mary and John went to the shop, {} gave a book to"]


def prompts(tokenizer, kind: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, source) token ids of equal shape."""
    templates = [TEMPLATES[i % len(TEMPLATES)] for i in range(batch)]
    target = tokenizer([t.format("Mary") for t in templates], return_tensors="pt").input_ids
    source = tokenizer([t.format("John") for t in templates], return_tensors="pt").input_ids
    if target.shape != source.shape:
        raise SystemExit(f"the prompts tokenize to different shapes {tuple(target.shape)} / {tuple(source.shape)}")
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        source = torch.randint(100, tokenizer.vocab_size, target.shape, generator=generator)
    return target, source


def run(model_dir: Path, sweeps, tools, batch: int, kind: str, repeats: int, anchor_repeats: int,
        tolerance: float) -> dict:
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = load_model(model_dir)
        target, source = prompts(tokenizer, kind, batch)
        bp.TOKENS = tuple(tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" John", " Mary"))
        others = {}
        if "transformerlens" in tools:  # every library gets its own copy: the bridge rewires its model
            copy, _ = load_model(model_dir)
            others["transformerlens"] = TransformerBridge.boot_transformers(str(model_dir), hf_model=copy,
                                                                            tokenizer=tokenizer)
        if "nnsight" in tools:
            copy, _ = load_model(model_dir)
            others["nnsight"] = (LanguageModel(copy, tokenizer=tokenizer), copy)
    runners = {
        "engine": lambda sweep: bp.engine_sweep(model, sweep, target, source),
        "naive": lambda sweep: bp.engine_sweep(model, sweep, target, source, method="naive"),
        "transformerlens": lambda sweep: bp.transformerlens_sweep(others["transformerlens"], sweep, target, source),
        "nnsight": lambda sweep: bp.nnsight_sweep(others["nnsight"], sweep, target, source),
    }
    n_layers, seq = model.config.num_hidden_layers, target.shape[1]
    differs = int((target != source).any(0).nonzero()[0]) if (target != source).any() else seq
    result = {"model": str(model_dir), "prompts": kind, "batch": batch, "seq": seq, "n_layers": n_layers,
              "first_differing_position": differs, "sweeps": {}}
    for sweep in sweeps:
        entry = {"tools": {}}
        reference = None
        for tool in ("engine",) + tuple(t for t in tools if t != "engine"):
            times, values = bp.timed(lambda: runners[tool](sweep), repeats if tool == "engine" else anchor_repeats,
                                     "cpu")
            values = values.float().cpu()
            reference = values if reference is None else reference
            diff = float((values - reference).abs().max())
            entry["tools"][tool] = {"median_s": statistics.median(times), "times_s": times, "max_abs_diff": diff}
            print(f"  {sweep:5s} {tool:16s} median {statistics.median(times):8.3f} s   max |diff| vs engine "
                  f"{diff:.1e}", flush=True)
        entry["cells"] = int(reference.numel())
        entry["floor_fraction"] = bp.floor_fraction(sweep, n_layers, seq)
        anchors = {t: entry["tools"][t]["median_s"] for t in ANCHORS if t in entry["tools"]}
        if anchors:
            fastest = min(anchors, key=anchors.get)
            entry["fastest_anchor"] = fastest
            entry["speedup_vs_fastest_anchor"] = anchors[fastest] / entry["tools"]["engine"]["median_s"]
        entry["agree"] = all(t["max_abs_diff"] <= tolerance for t in entry["tools"].values())
        result["sweeps"][sweep] = entry
    return result


def markdown(result: dict, meta: dict) -> str:
    lines = [f"**SmolLM2-135M** ({result['n_layers']} layers, {result['batch']} prompts x {result['seq']} tokens, "
             f"{result['prompts']} prompts, source and target first differ at position "
             f"{result['first_differing_position']}), float32, cpu; `python -m benchmarks.bench_real_lm"
             f"{meta['argv']}` on {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), load "
             f"average at start {meta['load']}; median of {meta['repeats']} run(s) for the engine, "
             f"{meta['anchor_repeats']} for the others.", ""]
    for sweep, entry in result["sweeps"].items():
        what = "resid_pre layer x position" if sweep == "resid" else "head_out layer x head (all positions)"
        lines += [f"{what}, {entry['cells']} cells:", "",
                  "| tool | median time | time / engine's | max abs diff vs engine |", "|---|---|---|---|"]
        engine = entry["tools"]["engine"]["median_s"]
        lines += [f"| {NAMES[t]} | {v['median_s']:.3f} s | {v['median_s'] / engine:.1f}x | {v['max_abs_diff']:.1e} |"
                  for t, v in entry["tools"].items()]
        if "fastest_anchor" in entry:
            lines += ["", f"engine {entry['speedup_vs_fastest_anchor']:.1f}x faster than the faster anchor "
                          f"({NAMES[entry['fastest_anchor']]}); all agree: {entry['agree']}."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--prompts", default="minimal,random", help="comma list of minimal, random")
    parser.add_argument("--sweeps", default="resid,head", help="comma list of resid, head")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the engine (median reported)")
    parser.add_argument("--anchor-repeats", type=int, default=None,
                        help="timed runs of the others (default: --repeats)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see docs/engine.md)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    kinds, sweeps, tools = (s.split(",") for s in (args.prompts, args.sweeps, args.tools))
    for value, allowed, what in ((kinds, ("minimal", "random"), "prompts"), (sweeps, ("resid", "head"), "sweep"),
                                 (tools, TOOLS, "tool")):
        if bad := [v for v in value if v not in allowed]:
            parser.error(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    if "engine" not in tools:
        parser.error("--tools must include engine (the reference every other tool is compared with)")
    anchor_repeats = args.repeats if args.anchor_repeats is None else args.anchor_repeats
    if args.repeats < 1 or anchor_repeats < 1 or args.threads < 1 or args.batch < 1:
        parser.error("--repeats, --anchor-repeats, --threads and --batch must be >= 1")
    check_model_dir(args.model_dir)
    if read_manifest(args.model_dir) is not None:
        verify_manifest(args.model_dir)
    torch.set_num_threads(args.threads)
    meta = {"argv": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "repeats": args.repeats, "anchor_repeats": anchor_repeats}
    print(f"bench_real_lm: {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), "
          f"load {meta['load']}", flush=True)
    results = []
    for kind in kinds:
        print(f"prompts: {kind}", flush=True)
        results.append(run(args.model_dir, sweeps, tools, args.batch, kind, args.repeats, anchor_repeats,
                           args.tolerance))
    print("\n" + "\n".join(markdown(r, meta) for r in results))
    return bp.finish(args.out, meta, results, args.tolerance)


if __name__ == "__main__":
    raise SystemExit(main())
