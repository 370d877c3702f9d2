"""The small-model circuit study on a model saved by ``explore_training.py --save``.

Runs the pipeline's analysis (``modules.studies.logic.circuit.run_circuit_study``: routing
attention, probes, the routing direction and steering, flip-pair patching and the planning
circuit) on a recipe-search model, with prompts shaped as that model was trained
(``--end-at-query``: the prompt ends at the query variable, which then predicts the first proof
token). Test problems and flip pairs are fresh, none of them in the model's training data
(regenerated from ``--data-seed`` and ``--train-size``, as explore_training draws it).

    python -m experiments.logic.circuit_study --model DIR --depth 2 --end-at-query --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from modules.studies.logic.circuit import CircuitConfig, cached_residuals, encode_prompts, run_circuit_study
from modules.studies.logic.circuit_outputs import write_circuit
from modules.studies.logic.data.dataset import generate_flip_pairs, generate_splits
from modules.studies.logic.data.syntax import end_compact_prompt
from modules.engine import capture_positions
from modules.core.io import atomic_dir
from modules.studies.logic.model import load_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a directory saved by explore_training --save")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--end-at-query", action="store_true", help="the model was trained on prompts without "
                        "the final `answer` (explore_training's end_at_query)")
    parser.add_argument("--data-seed", type=int, default=0, help="the training data's seed, to keep it out")
    parser.add_argument("--train-size", type=int, default=100_000, help="the training data's size, to keep it out")
    parser.add_argument("--n-test", type=int, default=2000, help="test problems (attention statistics, probes)")
    parser.add_argument("--n-pairs", type=int, default=500, help="query-flip pairs (steering, patching)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True, help="directory for summary.json, probes.csv, tensors, figures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    end = "query" if args.end_at_query else "answer"

    model, tokenizer = load_checkpoint(args.model)
    trained = generate_splits(args.data_seed, {"train": args.train_size, "val": 2000}, depth=args.depth)
    seen = set(trained["train"].prompt) | set(trained["val"].prompt)
    test = generate_splits(args.data_seed + 99, {"test": args.n_test}, depth=args.depth, exclude=seen)["test"]
    test = test.assign(prompt=test.prompt.map(lambda prompt: end_compact_prompt(prompt, end)))
    pairs = generate_flip_pairs(args.data_seed + 1, args.n_pairs, depth=args.depth, k=0, exclude=seen)
    for column in ("prompt_logop", "prompt_linear"):
        pairs[column] = pairs[column].map(lambda prompt: end_compact_prompt(prompt, end))

    # the last positions, as the activation-cache stage takes them: `query`, the query variable
    # (and `answer` when the prompt has it)
    positions = [-2, -1] if args.end_at_query else [-3, -2, -1]
    ids = encode_prompts(test.prompt.tolist(), tokenizer)
    sites = [f"resid_post.{layer}" for layer in range(model.config.n_layer)]
    residuals = cached_residuals(capture_positions(model, ids, sites, positions), positions, ids[0], tokenizer)
    config = CircuitConfig(n_problems=args.n_test)
    result = run_circuit_study(model, tokenizer, test, pairs, residuals, range(len(test)), config,
                               progress=lambda message: print(message, flush=True))
    with atomic_dir(args.out) as tmp:
        write_circuit(result, tmp, Path(args.model).name)
    print(f"circuit study of {args.model} at {args.out}")


if __name__ == "__main__":
    main()
