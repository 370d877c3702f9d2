"""Where a logic model's chain of rule lookups stops: linear probes, layer by layer, on the residual
stream at the last prompt position (where the first proof token is predicted).

Labels, on held-out problems with as many linear as LogOp queries:
- ``link1``: the first-written antecedent of the query's rule (one rule link up);
- ``link2``: that antecedent's own first-written antecedent (two links up; depth >= 3);
- ``chain``: which chain is queried, the bit the first proof token needs from the query.

    python -m experiments.logic.chain_probe --model DIR --depth 3 --end-at-query
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments.logic.routing_diagnostic import ancestor_path
from modules.studies.logic.data.dataset import generate_splits
from modules.engine.probes import probe_grid
from modules.studies.logic.model import load_checkpoint
from modules.training.sequences import encode


def labels(prompts: list[str], chains: list[str]) -> dict[str, torch.Tensor]:
    paths = [ancestor_path(prompt).split() for prompt in prompts]  # first-written antecedents, query upwards
    letter = lambda variable: ord(variable) - ord("A")  # noqa: E731
    out = {"link1": torch.tensor([letter(path[0]) for path in paths]),
           "chain": torch.tensor([chain == "linear" for chain in chains]).long()}
    if all(len(path) >= 2 for path in paths):
        out["link2"] = torch.tensor([letter(path[1]) for path in paths])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a directory saved by explore_training --save")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--end-at-query", action="store_true", help="the model was trained on prompts without "
                        "the final `answer`")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(args.model)
    frame = generate_splits(args.seed, {"test": args.n}, depth=args.depth, logop_share=0.5)["test"]
    prompts = [p.removesuffix(" answer") if args.end_at_query else p for p in frame.prompt]
    data = encode(tokenizer, prompts, list(frame.answer))
    with torch.no_grad():
        hidden = model(input_ids=data.input_ids, output_hidden_states=True).hidden_states
    last = data.prompt_lengths - 1
    rows = torch.arange(len(prompts))
    sites = {(layer, "last"): states[rows, last] for layer, states in enumerate(hidden)}
    for name, target in labels(list(frame.prompt), list(frame.query_chain)).items():
        table = probe_grid(sites, target, seed=args.seed).table
        for row in table.itertuples():
            print(json.dumps({"model": Path(args.model).name, "depth": args.depth, "label": name, "layer": row.layer,
                              "accuracy": round(row.accuracy, 4), "ci": [round(row.ci_low, 4), round(row.ci_high, 4)],
                              "n_test": row.n_test}), flush=True)


if __name__ == "__main__":
    main()
