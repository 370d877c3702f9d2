"""Can the small model find the rule that concludes the query? A one-hop probe task.

Depth-2 problems (one rule per chain, balanced query chains) whose answer is just the first
antecedent of the rule concluding the query: `rules F or Z > R . N > G . ... query R answer` ->
`F`. Solving it needs exactly the content match (query variable -> that rule's conclusion) that
routing by the query needs in the real task, and nothing else. The script trains the default
model on it with the default optimiser and prints, as JSON lines, validation exact match during
training, then where the final model's first token comes from: the queried rule's first
antecedent (right), the other rule's (the other chain), or elsewhere.

    python -m experiments.logic.routing_diagnostic --steps 1500 --threads 1
    python -m experiments.logic.routing_diagnostic --end-at-query   # prompts end at the query variable
    python -m experiments.logic.routing_diagnostic --end-at-query --with-trace --steps 3000   # learns it

`--hops 2 --depth 3` asks instead for the ancestor two links up (the chain's source, as the
depth-3 task's first proof token needs), with `--with-trace` traces of every second ancestor.

Two controls on plain letter sequences (`rules K D Q ... query`) separate the content match from
the logic: `--task induction` asks for the letter after one queried letter (one supervised
content match per sequence; `--queries 5` asks five in turn), `--task copy` asks for the whole
sequence again (every answer token after the first is a content match: the letter after the one
just written; `--length 0` varies the length so that position alone cannot do it).

    python -m experiments.logic.routing_diagnostic --task induction --queries 5 --threads 1
    python -m experiments.logic.routing_diagnostic --task copy --length 0 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from collections import Counter

import torch

from modules.studies.logic.data.dataset import generate_splits
from modules.studies.logic.data.solver import trace_compact
from modules.training.decoding import right_padded_logits, teacher_forced_exact_match
from modules.studies.logic.model import build_logic_model
from modules.studies.logic.tokenizer import build_logic_tokenizer
from modules.training.sequences import BatchStream, encode, training_loss


def rule_antecedents(prompt: str) -> dict[str, list[str]]:
    """conclusion -> antecedents, for the rules of a compact prompt."""
    tokens = prompt.split()
    rules = " ".join(tokens[1:tokens.index("facts")]).split(" . ")
    return {rule.strip(" .").split(" > ")[1]: [t for t in rule.strip(" .").split(" > ")[0].split() if t not in
                                               ("or", "and")] for rule in rules}


def queried_variable(prompt: str) -> str:
    """The variable after `query`."""
    tokens = prompt.split()
    return tokens[tokens.index("query") + 1]


def variables(text: str) -> set[str]:
    """The variables (single capital letters) named in ``text``."""
    return {t for t in text.split() if len(t) == 1 and t.isupper()}


def backward_trace(prompt: str) -> str:
    """The query's antecedents, breadth first: `... G > W . query W answer` -> `G N` (the solver's
    trace, as the pipeline's trace sequences use it)."""
    return trace_compact(prompt)


def ancestor_path(prompt: str, every: int = 1) -> str:
    """The query's ancestors along first-written antecedents, every ``every``-th one:
    `A > B . B > C . C > D . query D` -> `C B A` (every 1) or `B` (every 2). With ``every`` 2 each
    answer token is a two-link lookup from the token before it."""
    antecedents = rule_antecedents(prompt)
    path = [queried_variable(prompt)]
    while path[-1] in antecedents:
        path.append(antecedents[path[-1]][0])
    return " ".join(path[every::every])


def trace_answer(every: int):
    """The trace that answers an auxiliary sequence: every variable's antecedents breadth first
    (``every`` 1), or every ``every``-th ancestor along first-written antecedents."""
    return backward_trace if every == 1 else lambda prompt: ancestor_path(prompt, every)


def query_first(prompt: str) -> str:
    """Move `query X` to the front: `query X rules ... facts ... answer`, so that every rule
    token can see the query."""
    head, query = prompt.removesuffix(" answer").rsplit(" query ", 1)
    return f"query {query} {head} answer"


def sinusoidal_positions(model, scale: float = 0.02) -> None:
    """Overwrite the learned position embeddings with a sinusoidal table (sin on even, cos on odd
    dimensions) rescaled to standard deviation ``scale``, the token embeddings' init: offsets are
    then linear maps of positions, which might speed up the previous-token heads a lookup needs."""
    positions, dim = model.transformer.wpe.weight.shape
    pos = torch.arange(positions).unsqueeze(1).float()
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2).float() / dim)
    table = torch.zeros(positions, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(table / table.std() * scale)


def letter_sequences(n: int, seed: int, task: str, length: int = 10, queries: int = 1) -> tuple[list[str], list[str]]:
    """`rules` + distinct random letters + `query` (+ one of them, for induction) -> the answer.

    With ``queries`` > 1, induction asks several distinct letters in turn, each answered in the
    prompt (`query K answer D query Q answer`): every answer is a supervised content match
    (``inner_answer_id`` in the loss), at positions that differ from sequence to sequence.
    With ``length`` 0 the copy task draws each sequence's length from 4-12, so copying cannot
    be done by position alone."""
    rng, prompts, answers = random.Random(seed), [], []
    for _ in range(n):
        letters = rng.sample(string.ascii_uppercase, length or rng.randint(4, 12))
        if task == "copy":
            prompts.append(f"rules {' '.join(letters)} query")
            answers.append(" ".join(letters))
        elif queries == 1:
            i = rng.randrange(len(letters) - 1)
            prompts.append(f"rules {' '.join(letters)} query {letters[i]}")
            answers.append(letters[i + 1])
        else:
            asked = rng.sample(range(len(letters) - 1), queries)
            blocks = [f"query {letters[i]} answer {letters[i + 1]}" for i in asked[:-1]]
            prompts.append(" ".join(["rules", *letters, *blocks, f"query {letters[asked[-1]]} answer"]))
            answers.append(letters[asked[-1] + 1])
    return prompts, answers


Texts = tuple[list[str], list[str]]  # (prompts, answers)


def half_and_half(ours: Texts, theirs: Texts) -> Texts:
    """The first half of (prompts, answers) ``ours`` followed by as many of ``theirs``."""
    half = len(ours[0]) // 2
    return ours[0][:half] + theirs[0][:half], ours[1][:half] + theirs[1][:half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["routing", "induction", "copy"], default="routing")
    parser.add_argument("--with-copy", action="store_true",
                        help="induction: half the training sequences are variable-length copies (validation unchanged)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--end-at-query", action="store_true", help="drop the final 'answer' token")
    parser.add_argument("--query-first", action="store_true", help="routing: put `query X` before the rules")
    parser.add_argument("--queries", type=int, default=1, help="induction: queried letters per sequence")
    parser.add_argument("--length", type=int, default=10, help="letters per sequence (0: 4-12 at random)")
    parser.add_argument("--with-trace", action="store_true",
                        help="routing: half the training sequences are deeper problems answered by the query's "
                             "backward trace (every answer token a backward rule lookup; with --hops 2 every "
                             "second ancestor, each token a two-link lookup)")
    parser.add_argument("--hops", type=int, default=1,
                        help="routing: rule links from the query to the answer (first-written antecedents)")
    parser.add_argument("--depth", type=int, default=2, help="routing: depth of the problems")
    parser.add_argument("--trace-depth", type=int, default=5, help="routing: depth of the --with-trace problems")
    parser.add_argument("--rule-order", choices=["shuffled", "chain"], default="shuffled",
                        help="routing: chain writes each chain's rules in proof order (docs/logic/format.md)")
    parser.add_argument("--position-init", choices=["learned", "sinusoidal"], default="learned",
                        help="start the position embeddings random (GPT-2's init) or sinusoidal")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-size", type=int, default=50_000, help="distinct training sequences (repeated)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.query_first and args.end_at_query:  # a query-first prompt ends at `answer` by construction
        parser.error("--query-first and --end-at-query do not combine: a query-first prompt ends with `answer`")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = build_logic_tokenizer()
    prompt = query_first if args.query_first else (lambda p: p.removesuffix(" answer")) if args.end_at_query \
        else (lambda p: p)
    if args.task == "routing":
        splits = generate_splits(0, {"train": args.train_size, "val": 1_000}, depth=args.depth, logop_share=0.5,
                                 rule_order=args.rule_order)
        answer = lambda p: ancestor_path(p, args.hops).split()[0]  # noqa: E731
        texts = {name: ([prompt(p) for p in frame.prompt], [answer(p) for p in frame.prompt])
                 for name, frame in splits.items()}
        if args.with_trace:  # the same lookup (a variable -> its rule's antecedents), many per sequence
            deep = list(generate_splits(1, {"train": args.train_size // 2}, depth=args.trace_depth,
                                        logop_share=0.5, rule_order=args.rule_order)["train"].prompt)
            traces = ([prompt(p) for p in deep], [trace_answer(args.hops)(p) for p in deep])
            texts["train"] = half_and_half(texts["train"], traces)
    else:
        texts = {name: letter_sequences(size, seed, args.task, args.length, args.queries)
                 for name, size, seed in (("train", args.train_size, 0), ("val", 1_000, 1))}
        if args.with_copy:  # the copy task drills the same circuit (current letter -> the one after it) densely
            texts["train"] = half_and_half(texts["train"], letter_sequences(args.train_size, 2, "copy", 0))
    data = {name: encode(tokenizer, *pair) for name, pair in texts.items()}
    model = build_logic_model(3, 3, 96, 128, 0.0, 0, "gelu_new")  # as its recorded runs
    if args.position_init == "sinusoidal":
        sinusoidal_positions(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1,
                                                   cycle_momentum=False)
    stream, val, start = BatchStream(data["train"], 128, 0, args.steps), data["val"], time.perf_counter()
    config = {"task": args.task, "end_at_query": args.end_at_query, "query_first": args.query_first, "lr": args.lr,
              "queries": args.queries, "length": args.length, "train_size": args.train_size,
              "with_copy": args.with_copy, "with_trace": args.with_trace, "hops": args.hops, "depth": args.depth,
              "trace_depth": args.trace_depth, "position_init": args.position_init, "rule_order": args.rule_order}
    inner_answer_id = tokenizer.convert_tokens_to_ids("answer")
    for step in range(1, args.steps + 1):
        batch = stream[step - 1]
        logits = right_padded_logits(model, batch.input_ids)[:, :-1]
        loss = training_loss(logits, batch, inner_answer_id=inner_answer_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            exact = teacher_forced_exact_match(model, val.input_ids, val.prompt_lengths, val.lengths).float().mean()
            model.train()
            print(json.dumps({"config": config, "step": step, "loss": round(loss.item(), 4), "val_exact": exact.item(),
                              "wall_s": round(time.perf_counter() - start, 1)}), flush=True)
    if args.task != "routing":
        return
    model.eval()
    with torch.no_grad():
        logits = right_padded_logits(model, val.input_ids)
    first = logits[torch.arange(len(val)), val.prompt_lengths - 1].argmax(-1)
    sources = Counter()
    for p, token, chain in zip(splits["val"].prompt, tokenizer.convert_ids_to_tokens(first.tolist()),
                               splits["val"].query_chain):
        # "queried_rule": the right ancestor; "other_rule": any variable of the other chain
        other = variables(p) - variables(backward_trace(p)) - {queried_variable(p)}
        where = "queried_rule" if token == answer(p) else "other_rule" if token in other else "elsewhere"
        sources[f"{chain}/{where}"] += 1
    print(json.dumps({"config": config, "first_token_from": dict(sorted(sources.items()))}), flush=True)


if __name__ == "__main__":
    main()
