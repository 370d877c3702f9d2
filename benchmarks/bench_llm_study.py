"""What the LLM study of study 1 costs at 7B scale: wall time per phase and peak GPU memory.

Runs the real ``run_study`` (accuracy, head patching of outputs/queries/keys/values, attention
statistics, mean ablations) on query-flip prompts from the generator, with a random-weight model
of the Mistral-7B configuration and a word-level tokenizer built from the prompts themselves (no
weights or tokenizer are downloaded). Random weights make the study's findings meaningless; the
figures are the cost, which does not depend on the weights. Every phase's time scales with the
number of examples, so the JSON also gives the time the default study (``--full-pairs`` pairs,
both query directions) would take at the measured rate.

    python -m benchmarks.bench_llm_study --shape mistral-7b --device cuda --dtype bfloat16 --pairs 16
    python -m benchmarks.bench_llm_study --shape tiny-llama --pairs 4        # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time

import torch
import transformers

from benchmarks.bench_patching import SHAPES, build_model
from modules.studies.logic.llm import HEAD_SITES, StudyConfig, run_study
from modules.studies.logic.data.dataset import generate_flip_pairs
from modules.engine.tiny import vocabulary_tokenizer

def prompt_tokenizer(pairs):
    """Every word and punctuation mark of the pairs' prompts and answers, one token each."""
    text = " ".join(pairs[c].str.cat(sep=" ") for c in pairs.columns if c.startswith(("nl_prompt", "nl_answer")))
    return vocabulary_tokenizer(sorted(set(re.findall(r"\w+|[^\w\s]", text))), split_punctuation=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mistral-7b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--pairs", type=int, default=16, help="query-flip pairs measured (both directions each)")
    parser.add_argument("--full-pairs", type=int, default=300, help="pairs of the study whose time is projected")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sites", nargs="+", default=list(HEAD_SITES), choices=list(HEAD_SITES))
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", help="write the measurements there as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pairs = generate_flip_pairs(0, args.pairs, depth=args.depth, k=args.shots)
    tokenizer = prompt_tokenizer(pairs)
    shape = dict(SHAPES[args.shape])
    if shape["arch"] != "mistral" and shape["vocab_size"] < len(tokenizer):
        shape["vocab_size"] = len(tokenizer)
    device = torch.device(args.device)
    tic = time.perf_counter()
    model = build_model(shape, args.device, getattr(torch, args.dtype))
    build_s = time.perf_counter() - tic
    if len(tokenizer) > model.config.vocab_size:
        parser.error(f"the prompts need {len(tokenizer)} tokens; the model has {model.config.vocab_size}")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    marks: list[tuple[str, float]] = []

    def progress(message: str) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((message, time.perf_counter()))
        print(f"[{marks[-1][1] - marks[0][1]:8.1f} s] {message}", flush=True)

    config = StudyConfig(batch_size=args.batch_size, examples="all", sites=tuple(args.sites),
                         random_controls=1, n_boot=200)
    result = run_study(model, tokenizer, pairs, config, progress=progress)
    progress("done")
    phases: dict[str, float] = {}
    for (message, start), (_, end) in zip(marks, marks[1:]):
        name = "decoding" if message.endswith("decoding") else message.replace(":", "").replace(" ", "_")
        phases[name] = round(end - start, 2)
    total = marks[-1][1] - marks[0][1]
    n_examples = result.summary["n_analysed"]
    scale = 2 * args.full_pairs / n_examples
    record = {
        "meta": {"argv": " ".join(sys.argv[1:] if argv is None else argv), "machine": platform.machine(),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "dtype": args.dtype},
        "shape": args.shape, "n_layers": result.n_layers, "n_heads": result.n_heads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pairs": args.pairs, "examples": n_examples, "prompt_tokens": max(len(tokenizer(text)["input_ids"]) for column in pairs.columns
                                                   if column.startswith("nl_prompt") for text in pairs[column]),
        "batch_size": args.batch_size, "sites": args.sites, "model_build_s": round(build_s, 1),
        "phases_s": phases, "total_s": round(total, 1),
        "projected_full_study_s": round(total * scale, 0), "projected_pairs": args.full_pairs,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
        if device.type == "cuda" else None,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
