"""Back-patching benchmark: every (source layer > target layer) pair of one prompt, decoded greedily.

Back-patching (Biran et al. 2024) writes block ls's output at position p into block lt's output at p
during the prompt pass, then decodes 10 tokens from the patched cache, for every ls > lt. Timed,
on the same model and prompt, in one process:

* ``hf``: the authors' method, one ``model.generate`` call per pair with a forward hook on block lt
  that overwrites the output at p while the sequence is longer than one token (the prompt pass);
* ``backpatch``: the engine's per-pair ``backpatch``;
* ``grid``: the engine's ``backpatch_grid`` (one capture pass, the tokens before p run once, the
  pairs as rows of a batch);
* ``nnsight``: nnsight 0.8's ``generate`` with one invoke per pair, 32 invokes a call (its
  interventions apply to the first forward, the prompt pass, unless told otherwise).

Every tool must produce the grid's tokens (exit status 1 otherwise). The run prints each tool's
median over ``--repeats`` (after ``--warmup`` untimed runs) and its time over the grid's. Default: a
random-weight Llama config on the CPU (under a minute); ``--model DIR`` times a local model directory instead (e.g. the 30-layer SmolLM2-135M). Positions:
``--positions`` (default: the middle of the prompt, where the shared prefix is long, and the
last token).

Run: ``python -m benchmarks.bench_backpatch --threads 1``; ``--out`` writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from modules.engine import tiny  # noqa: E402
from modules.engine.adapters import get_adapter, load_model  # noqa: E402
from modules.engine.patchscope import backpatch, backpatch_grid  # noqa: E402

TOOLS = ("grid", "backpatch", "hf", "nnsight")
NAMES = {"grid": "engine backpatch_grid", "backpatch": "engine backpatch, a call per pair",
         "hf": "HF generate + hook, a call per pair", "nnsight": "nnsight 0.8 generate, 32 invokes a call"}
PROMPT = "The mother of the singer of the song Imagine was born in the city of Liverpool, and the father of"


def tiny_setup(args):
    """A random Llama of the given size and a random prompt; the tokenizer nnsight wants."""
    model = tiny.tiny_model("llama", n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                            n_kv_heads=max(1, args.heads // 2), vocab_size=args.vocab, max_positions=256,
                            init_std=0.15)
    ids = torch.randint(0, args.vocab - 1, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    directory = tempfile.mkdtemp()
    tiny.word_tokenizer(args.vocab).save_pretrained(directory)
    from transformers import AutoTokenizer
    return model, AutoTokenizer.from_pretrained(directory), ids, f"random Llama ({args.layers} layers, d_model " \
        f"{args.d_model}, vocab {args.vocab})"


def model_setup(args):
    model, tokenizer = load_model(args.model)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    return model, tokenizer, ids, f"{Path(args.model).name} ({get_adapter(model).n_layers} layers)"


def block_states(model, ids, position: int) -> torch.Tensor:
    """[n_layers, d_model]: every block's output at ``position``, from one pass with plain hooks."""
    states = []

    def record(module, args, output):
        states.append((output if isinstance(output, torch.Tensor) else output[0])[0, position].clone())
    handles = [block.register_forward_hook(record) for block in get_adapter(model).blocks]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(states)


def greedy_config(model, n_new: int):
    """Greedy decoding of exactly ``n_new`` tokens (no stop at end-of-sequence), as the engine decodes."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, max_new_tokens=n_new, eos_token_id=[], num_beams=1,  # None: the model's
                  pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0)
    for name in ("temperature", "top_p", "top_k"):
        setattr(config, name, None)
    return config


def hf_pairs(model, ids, position, pairs, n_new):
    states, config = block_states(model, ids, position), greedy_config(model, n_new)
    blocks, tokens = get_adapter(model).blocks, []
    for source, target in pairs:
        def hook(module, args, output, vector=states[source]):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            if hidden.shape[1] == 1:  # a decode step: the patch lives in the cache
                return None
            hidden = hidden.clone()
            hidden[:, position] = vector
            return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])
        handle = blocks[target].register_forward_hook(hook)
        try:
            with torch.no_grad():
                tokens.append(model.generate(ids, generation_config=config)[0, ids.shape[1]:])
        finally:
            handle.remove()
    return torch.stack(tokens)


def nnsight_pairs(lm, model, ids, position, pairs, n_new, per_call=32):
    """``lm`` wraps a copy of ``model``; the states come from ``model`` (the same weights)."""
    states, config = block_states(model, ids, position), greedy_config(model, n_new)
    layers, tokens = lm.model.layers, []
    for start in range(0, len(pairs), per_call):
        with torch.no_grad(), lm.generate(generation_config=config) as tracer:
            for source, target in pairs[start:start + per_call]:
                with tracer.invoke(ids):
                    layers[target].output[:, position] = states[source]
            with tracer.invoke():
                out = tracer.result.save()
        tokens.append(out[:, ids.shape[1]:])
    return torch.cat(tokens)


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def run(model, tokenizer, ids, tools, positions, n_new: int, repeats: int, batch_size: int,
        warmup: int = 1) -> list[dict]:
    n_layers = get_adapter(model).n_layers
    pairs = [(source, target) for source in range(n_layers) for target in range(source)]
    lm = None
    if "nnsight" in tools:
        from nnsight import LanguageModel
        lm = LanguageModel(copy.deepcopy(model), tokenizer=tokenizer)  # nnsight wraps its own copy
    runners = {
        "grid": lambda p: backpatch_grid(model, ids, p, pairs, max_new_tokens=n_new, batch_size=batch_size).tokens,
        "backpatch": lambda p: torch.cat([backpatch(model, ids, s, t, positions=[p], max_new_tokens=n_new).tokens
                                          for s, t in pairs]),
        "hf": lambda p: hf_pairs(model, ids, p, pairs, n_new),
        "nnsight": lambda p: nnsight_pairs(lm, model, ids, p, pairs, n_new),
    }
    results = []
    for position in positions:
        p = position % ids.shape[1]
        entry = {"position": p, "pairs": len(pairs), "tools": {}}
        reference = None
        for tool in tools:
            timed(lambda: runners[tool](p), warmup)
            times, tokens = timed(lambda: runners[tool](p), repeats)
            reference = tokens if reference is None else reference
            mismatched = int((tokens != reference).any(-1).sum())
            entry["tools"][tool] = {"median_s": statistics.median(times), "times_s": times,
                                    "pairs_differing": mismatched}
            print(f"  position {p:3d} {tool:10s} median {statistics.median(times):8.3f} s   "
                  f"pairs whose tokens differ from {tools[0]}'s: {mismatched}", flush=True)
        entry["agree"] = all(t["pairs_differing"] == 0 for t in entry["tools"].values())
        results.append(entry)
    return results


def table(results: list[dict], meta: dict) -> str:
    lines = [f"{meta['what']}, prompt of {meta['prompt_len']} tokens, {meta['new_tokens']} new tokens, every "
             f"ls > lt pair; {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), load at start "
             f"{meta['load']}; median of {meta['repeats']} run(s).", ""]
    for entry in results:
        base = next(iter(entry["tools"]))
        grid = entry["tools"][base]["median_s"]
        lines += [f"position {entry['position']}, {entry['pairs']} pairs (all agree: {entry['agree']}):", "",
                  f"| method | median time | time / {NAMES[base]}'s |", "|---|---|---|"]
        for tool, t in entry["tools"].items():
            lines.append(f"| {NAMES[tool]} | {t['median_s']:.3f} s | {t['median_s'] / grid:.1f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local model directory (default: a random Llama config)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--positions", default=None,
                        help="comma list of patched positions (default: the prompt's middle and -1)")
    parser.add_argument("--layers", type=int, default=8, help="random model: blocks")
    parser.add_argument("--d-model", type=int, default=128, help="random model: width")
    parser.add_argument("--heads", type=int, default=4, help="random model: attention heads")
    parser.add_argument("--vocab", type=int, default=2000, help="random model: vocabulary size")
    parser.add_argument("--prompt-len", type=int, default=20, help="random model: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="backpatch_grid rows a batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each tool (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each tool first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    chosen = args.tools.split(",")
    bad = [t for t in chosen if t not in TOOLS]
    if bad:
        parser.error(f"unknown tool {bad[0]!r}; choose from {', '.join(TOOLS)}")
    tools = [t for t in TOOLS if t in chosen]  # the grid first: the others are checked against it
    for name in ("layers", "d_model", "heads", "vocab", "prompt_len", "new_tokens", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.layers < 2:
        parser.error("--layers must be >= 2 (pairs need ls > lt)")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer, ids, what = model_setup(args) if args.model else tiny_setup(args)
    try:
        positions = ([int(p) for p in args.positions.split(",")] if args.positions
                     else [ids.shape[1] // 2, -1])
    except ValueError:
        parser.error(f"--positions must be a comma list of integers, got {args.positions!r}")
    for p in positions:
        if not -ids.shape[1] <= p < ids.shape[1]:
            parser.error(f"position {p} out of range for a prompt of {ids.shape[1]} tokens")
    meta = {"what": what, "prompt_len": ids.shape[1], "new_tokens": args.new_tokens,
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "repeats": args.repeats, "warmup": args.warmup, "argv": " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"bench_backpatch: {what}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), "
          f"load {meta['load']}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run(model, tokenizer, ids, tools, positions, args.new_tokens, args.repeats, args.batch_size,
                      args.warmup)
    print("\n" + table(results, meta))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        os.replace(tmp, args.out)
    if not all(entry["agree"] for entry in results):
        print("error: a method's tokens differ from the grid's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
