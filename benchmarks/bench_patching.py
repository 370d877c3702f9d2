"""Patching benchmark: this engine against a naive hook loop, TransformerLens 4 and nnsight 0.8.

The same residual-stream layer x position sweep and the same layer x head sweep (head outputs,
all positions), on the same random-weight model and prompts, in one run. Every tool's per-cell
result (the batch-mean logit difference at the last position) must agree with the engine's; the
run prints median wall times, ratios, and the engine against the FLOP floor:

    floor fraction = sum over cells of (layers from l up) x (positions from p on)
                     / (cells x layers x positions)        (the work that must be recomputed)
    floor time     = floor fraction x the faster anchor's time

Run: ``python -m benchmarks.bench_patching`` (CPU, float32: the 3-layer and GPT-2-small shapes);
``--shapes mistral-7b --device cuda --dtype bfloat16`` on a GPU. ``--write-docs`` puts the
measured tables into docs/engine.md; ``--out`` writes them as JSON, and ``--from-json`` puts such
a file's tables into docs/engine.md (a run recorded on another host).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens' per-cell progress bars
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from modules.engine import tiny  # noqa: E402
from modules.engine.patching import patch_head_sweep, patch_resid_sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "engine.md"
BEGIN, END = "<!-- bench_patching:begin -->", "<!-- bench_patching:end -->"

SHAPES = {
    # the project's 3-layer GPT-2-architecture model (vocabulary of the logic tokenizer)
    "logic-3l": dict(arch="gpt2", n_layers=3, d_model=96, n_heads=3, vocab_size=39, max_positions=128,
                     batch=16, seq=64),
    "gpt2-small": dict(arch="gpt2", n_layers=12, d_model=768, n_heads=12, vocab_size=50257, max_positions=1024,
                       batch=4, seq=32),
    "mistral-7b": dict(arch="mistral", batch=4, seq=32),
    # smoke-test shapes for the test suite
    "tiny-gpt2": dict(arch="gpt2", n_layers=2, d_model=32, n_heads=4, vocab_size=64, max_positions=64, batch=2, seq=8),
    "tiny-llama": dict(arch="llama", n_layers=2, d_model=32, n_heads=4, vocab_size=64, max_positions=64, batch=2,
                       seq=8),
}
TOOLS = ("engine", "naive", "transformerlens", "nnsight")
ANCHORS = ("naive", "transformerlens", "nnsight")
TOKENS = (5, 7)  # logit difference between these two tokens at the last position


def logit_diff(logits):
    return logits[:, -1, TOKENS[0]].float() - logits[:, -1, TOKENS[1]].float()


def mean_logit_diff(logits):
    return logit_diff(logits).mean()


def build_model(shape: dict, device: str, dtype: torch.dtype):
    """A fresh random-weight model of ``shape`` (seed 0), eager attention, in eval mode."""
    from transformers import AutoModelForCausalLM, MistralConfig

    if shape["arch"] == "mistral":  # the Mistral-7B configuration (transformers' defaults)
        config = MistralConfig(attn_implementation="eager")
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
        return model.eval()
    keys = ("n_layers", "d_model", "n_heads", "vocab_size", "max_positions")
    model = tiny.tiny_model(shape["arch"], dtype=dtype, n_kv_heads=None, **{k: shape[k] for k in keys})
    return model.to(device)


def tokenizer_for(vocab_size: int, directory: str):
    from transformers import AutoTokenizer

    tiny.word_tokenizer(vocab_size).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)  # a tokenizer with a path, as TransformerLens wants


def blocks_of(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


# --- one function per tool and sweep: each returns per-cell batch means ---------------------------
def engine_sweep(model, sweep, target, source, method="restart"):
    fn = patch_resid_sweep if sweep == "resid" else patch_head_sweep
    return fn(model, target, source, logit_diff, method=method).mean(-1)


def transformerlens_sweep(bridge, sweep, target, source):
    import transformer_lens.patching as tl_patching

    with torch.no_grad():
        _, cache = bridge.run_with_cache(source)
        fn = (tl_patching.get_act_patch_resid_pre if sweep == "resid"
              else tl_patching.get_act_patch_attn_head_out_all_pos)
        return fn(bridge, target, cache, mean_logit_diff)


def nnsight_sweep(wrapped, sweep, target, source, invokes_per_trace=32):
    """Batched invokes: one trace reads the source run, then 32 patched target runs per trace."""
    import nnsight

    lm, model = wrapped
    n_layers = len(blocks_of(model))
    n_heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // n_heads
    blocks = lm.transformer.h if hasattr(model, "transformer") else lm.model.layers
    o_proj = [b.attn.c_proj if hasattr(model, "transformer") else b.self_attn.o_proj for b in blocks]
    with torch.no_grad():
        with lm.trace(source):
            saved = nnsight.save([])
            for layer in range(n_layers):
                saved.append(blocks[layer].input if sweep == "resid" else o_proj[layer].input)
        if sweep == "resid":
            cells = [(layer, pos) for layer in range(n_layers) for pos in range(target.shape[1])]
        else:
            cells = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        values = []
        for start in range(0, len(cells), invokes_per_trace):
            with lm.trace() as tracer:
                out = nnsight.save([])
                for layer, index in cells[start:start + invokes_per_trace]:
                    with tracer.invoke(target):
                        if sweep == "resid":
                            blocks[layer].input[:, index] = saved[layer][:, index]
                        else:
                            cols = slice(index * head_dim, (index + 1) * head_dim)
                            o_proj[layer].input[:, :, cols] = saved[layer][:, :, cols]
                        out.append(mean_logit_diff(lm.lm_head.output))
            values += [v.detach() for v in out]
    second = target.shape[1] if sweep == "resid" else n_heads
    return torch.stack(values).reshape(n_layers, second)


def floor_fraction(sweep: str, n_layers: int, seq: int) -> float:
    """Recomputed work over naive work (a full forward per cell), in layer x position units."""
    layers = range(n_layers)
    if sweep == "resid":
        floor = sum((n_layers - l) * (seq - p) for l in layers for p in range(seq))
        return floor / (n_layers * seq * n_layers * seq)
    return sum(n_layers - l for l in layers) / (n_layers * n_layers)


def timed(fn, repeats: int, device: str):
    times, result = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, result


def run_shape(name: str, tools, sweeps, repeats: int, anchor_repeats: int, device: str, dtype: torch.dtype,
              tolerance: float) -> dict:
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    shape = SHAPES[name]
    generator = torch.Generator().manual_seed(1)
    models = {}
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine_model = build_model(shape, device, dtype)
        vocab, n_layers = engine_model.config.vocab_size, len(blocks_of(engine_model))
        tokenizer = tokenizer_for(vocab, directory)
        target = torch.randint(0, vocab, (shape["batch"], shape["seq"]), generator=generator).to(device)
        source = torch.randint(0, vocab, (shape["batch"], shape["seq"]), generator=generator).to(device)
        # every library gets its own copy: TransformerBridge rewires the HF model it wraps
        if "transformerlens" in tools:
            models["transformerlens"] = TransformerBridge.boot_transformers(
                directory, hf_model=build_model(shape, device, dtype), tokenizer=tokenizer)
        if "nnsight" in tools:
            copy = build_model(shape, device, dtype)
            models["nnsight"] = (LanguageModel(copy, tokenizer=tokenizer), copy)
        run = {
            "engine": lambda sweep: engine_sweep(engine_model, sweep, target, source),
            "naive": lambda sweep: engine_sweep(engine_model, sweep, target, source, method="naive"),
            "transformerlens": lambda sweep: transformerlens_sweep(models["transformerlens"], sweep, target, source),
            "nnsight": lambda sweep: nnsight_sweep(models["nnsight"], sweep, target, source),
        }
        results = {"shape": name, **{k: v for k, v in shape.items()}, "n_layers": n_layers, "vocab": vocab,
                   "device": device, "dtype": str(dtype).replace("torch.", ""), "sweeps": {}}
        for sweep in sweeps:
            entry = {"tools": {}}
            reference = None
            for tool in ("engine",) + tuple(t for t in tools if t != "engine"):
                times, values = timed(lambda: run[tool](sweep), repeats if tool == "engine" else anchor_repeats,
                                      device)
                values = values.float().cpu()
                if reference is None:
                    reference = values
                diff = float((values - reference).abs().max())
                entry["tools"][tool] = {"median_s": statistics.median(times), "times_s": times, "max_abs_diff": diff}
                print(f"  {name} {sweep:5s} {tool:16s} median {statistics.median(times):8.3f} s   "
                      f"max |diff| vs engine {diff:.2e}", flush=True)
            entry["cells"] = int(reference.numel())
            entry["floor_fraction"] = floor_fraction(sweep, n_layers, shape["seq"])
            anchors = [entry["tools"][t]["median_s"] for t in ANCHORS if t in entry["tools"]]
            if anchors:
                entry["floor_s"] = entry["floor_fraction"] * min(anchors)
                entry["engine_vs_floor"] = entry["tools"]["engine"]["median_s"] / entry["floor_s"]
                entry["speedup_vs_fastest_anchor"] = min(anchors) / entry["tools"]["engine"]["median_s"]
            entry["agree"] = all(t["max_abs_diff"] <= tolerance for t in entry["tools"].values())
            results["sweeps"][sweep] = entry
    return results


def shape_markdown(res: dict, meta: dict) -> str:
    """One shape's measured tables, with the command and conditions that produced them."""
    names = {"engine": "this engine", "naive": "naive hook loop", "transformerlens": "TransformerLens 4.3",
             "nnsight": "nnsight 0.8 (32 invokes a trace)"}
    lines = [f"<!-- shape:{res['shape']} -->",
             f"**{res['shape']}** ({res['n_layers']} layers, {res['batch']} prompts x {res['seq']} tokens, "
             f"{res['dtype']}, {res['device']}), measured by `python -m benchmarks.bench_patching{meta['argv']}` "
             f"on {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), load average at start "
             f"{meta['load']}; median of {meta['repeats']} run(s) for the engine, {meta['anchor_repeats']} for the "
             "others.", ""]
    for sweep, entry in res["sweeps"].items():
        what = "resid_pre layer x position" if sweep == "resid" else "head_out layer x head (all positions)"
        lines += [f"{what}, {entry['cells']} cells:", "",
                  "| tool | median time | engine speed-up | max abs diff vs engine |", "|---|---|---|---|"]
        engine_time = entry["tools"]["engine"]["median_s"]
        for tool, t in entry["tools"].items():
            lines.append(f"| {names[tool]} | {t['median_s']:.3f} s | {t['median_s'] / engine_time:.1f}x | "
                         f"{t['max_abs_diff']:.1e} |")
        if "floor_s" in entry:
            lines += ["", f"FLOP floor {entry['floor_fraction']:.1%} of the naive work, i.e. {entry['floor_s']:.3f} s "
                          f"(that share of the fastest anchor); engine / floor = {entry['engine_vs_floor']:.2f}; "
                          f"engine {entry['speedup_vs_fastest_anchor']:.1f}x faster than the fastest anchor; "
                          f"all agree: {entry['agree']}."]
        lines.append("")
    lines.append(f"<!-- /shape:{res['shape']} -->")
    return "\n".join(lines) + "\n"


def write_docs(blocks: dict[str, str], docs: Path = DOCS) -> None:
    """Replace (or add) each measured shape's block in the docs section; other shapes stay."""
    doc = docs.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{docs} has no {BEGIN} ... {END} section to fill")
    head, rest = doc.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    block = re.compile(r"<!-- shape:([\w-]+) -->\n.*?<!-- /shape:\1 -->\n", flags=re.S)
    kept = {match.group(1): match.group(0) for match in block.finditer(section)}
    kept.update(blocks)
    body = "\n".join(kept[name] for name in SHAPES if name in kept)
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
    os.replace(tmp, docs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="logic-3l,gpt2-small", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--sweeps", default="resid,head", help="comma list of resid, head")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the engine (median reported)")
    parser.add_argument("--anchor-repeats", type=int, default=None,
                        help="timed runs of each other tool (default: --repeats)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max abs diff allowed between tools (default 1e-5 in float32, 0.1 otherwise)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--write-docs", action="store_true", help="put the tables into docs/engine.md")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file whose section --write-docs fills")
    parser.add_argument("--from-json", type=Path, metavar="JSON", help="measure nothing: put the tables of a "
                        "recorded run (an --out file, e.g. from a GPU host) into docs/engine.md")
    args = parser.parse_args(argv)
    if args.from_json:
        recorded = json.loads(args.from_json.read_text())
        write_docs({res["shape"]: shape_markdown(res, recorded["meta"]) for res in recorded["results"]}, args.docs)
        return 0
    shapes, sweeps, tools = (s.split(",") for s in (args.shapes, args.sweeps, args.tools))
    choices = ((shapes, SHAPES, "shape"), (sweeps, ("resid", "head"), "sweep"), (tools, TOOLS, "tool"))
    for value, allowed, what in choices:
        bad = [v for v in value if v not in allowed]
        if bad:
            parser.error(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    if "engine" not in tools:
        parser.error("--tools must include engine (the reference every other tool is compared with)")
    anchor_repeats = args.repeats if args.anchor_repeats is None else args.anchor_repeats
    if args.repeats < 1 or anchor_repeats < 1:
        parser.error("--repeats and --anchor-repeats must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else (1e-5 if dtype == torch.float32 else 0.1)
    meta = {"argv": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])
                            if a != "--write-docs"),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU" if args.device == "cpu"
            else torch.cuda.get_device_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()), "repeats": args.repeats,
            "anchor_repeats": anchor_repeats}
    print(f"bench_patching: {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
          f"load {meta['load']}", flush=True)
    results = [run_shape(name, tools, sweeps, args.repeats, anchor_repeats, args.device, dtype, tolerance)
               for name in shapes]
    blocks = {res["shape"]: shape_markdown(res, meta) for res in results}
    print("\n" + "\n".join(blocks.values()))
    if args.write_docs:
        write_docs(blocks, args.docs)
    return finish(args.out, meta, results, tolerance)


def finish(out: Path | None, meta: dict, results: list[dict], tolerance: float) -> int:
    """Write the results as JSON to ``out`` (when given, atomically); the exit status: 1 when two
    tools disagree beyond ``tolerance`` anywhere."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        os.replace(tmp, out)
    agree = all(entry["agree"] for res in results for entry in res["sweeps"].values())
    if not agree:
        print(f"error: tools disagree by more than {tolerance}", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
