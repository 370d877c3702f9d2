"""Search training recipes for the small logic model quickly (any device, no tracking).

A plain PyTorch loop over the same model, tokenizer and encoding as the pipeline. It reports
teacher-forced exact match on the validation split, which for greedy decoding is the same
quantity the pipeline reports (a proof decodes exactly iff every answer token, <eos> included,
is the argmax given the correct prefix). Use it to pick ``params.yaml`` defaults; the figures
that count come from ``bench_training.py``.

    python -m experiments.logic.explore_training --config '{"n_embd": 120, "lr": 0.003}' --steps 6000
    python -m experiments.logic.explore_training --summarize experiments/logic/results/explore-*.jsonl

Many recipes run side by side on one GPU box by starting one process per config line.
Recorded searches are in ``experiments/logic/results/explore-*.jsonl`` (one JSON line per evaluation).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from experiments.logic.routing_diagnostic import query_first, trace_answer, variables
from modules.studies.logic.data.dataset import generate_splits
from modules.studies.logic.data.solver import solve_compact
from modules.engine.adapters import ModelLoadError
from modules.engine.metrics import wilson_ci
from modules.studies.logic.model import build_logic_model, load_checkpoint, save_checkpoint
from modules.studies.logic.tokenizer import build_logic_tokenizer
from modules.training.decoding import right_padded_outputs, teacher_forced_exact_match
from modules.studies.logic.training.sequences import conclusion_source_targets, source_head, source_loss
from modules.training.sequences import BatchStream, encode, training_loss

DEFAULTS = dict(n_embd=96, n_head=3, n_layer=3, lr=3e-3, batch_size=128, warmup_frac=0.1, beta2=0.98,
                weight_decay=0.01, grad_clip=1.0, train_size=100_000, depth=3, data_seed=0, seed=0,
                extra_depths=[], extra_share=0.0, first_token_weight=1.0, train_logop_share=None,
                query_first=False, prompt_loss_weight=0.0, end_at_query=False, backward_aux=0.0,
                multi_query=0, trace_depth=None, trace_every=1, more_traces=[], init_from=None,
                trace_marker=False, rule_order="shuffled", source_aux=0.0, source_aux_layer=2,
                activation="gelu_new")  # the recorded searches ran GPT-2's tanh GELU, not the pipeline's default


def exact_per_problem(model, data, first_token_only: bool = False, batch_size: int = 2000) -> torch.Tensor:
    """Whether greedy decoding gives each sequence's answer (teacher-forced, in one pass), or only its
    first token."""
    chunks = []
    for start in range(0, len(data), batch_size):
        ids, prompt_lengths, lengths = (t[start:start + batch_size] for t in
                                        (data.input_ids, data.prompt_lengths, data.lengths))
        chunks.append(teacher_forced_exact_match(model, ids, prompt_lengths,
                                                 prompt_lengths + 1 if first_token_only else lengths))
    return torch.cat(chunks)


def teacher_forced(model, data):
    """Exact match (greedy decoding's, in one pass) and first-answer-token accuracy."""
    return (exact_per_problem(model, data).float().mean().item(),
            exact_per_problem(model, data, first_token_only=True).float().mean().item())


def breakdown(frame) -> dict[str, float]:
    """Exact match per query chain x operator x derivable group."""
    return {f"{k[0]}/{k[1]}/{k[2]}": round(v, 3)
            for k, v in frame.groupby(["query_chain", "operator", "derivable"]).ok.mean().items()}


def grown(model, n_layer: int, seed: int):
    """``model`` with new blocks on top, up to ``n_layer``: the new blocks' output projections start
    at zero, so the grown model computes exactly what the smaller one did."""
    config = model.config
    bigger = build_logic_model(n_layer, config.n_head, config.n_embd, config.n_positions, 0.0, seed,
                               config.activation_function)
    bigger.load_state_dict(model.state_dict(), strict=False)  # the new blocks are the missing keys
    with torch.no_grad():
        for block in bigger.transformer.h[config.n_layer:]:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
    return bigger


def with_earlier_queries(prompt: str, rng: random.Random, most: int) -> str:
    """Insert 0..``most`` answered queries on the problem's other variables before its own:
    `... facts ... query C answer A query D answer` (each answered by its first proof token,
    so one sequence supervises several query lookups)."""
    head, query = prompt.removesuffix(" answer").rsplit(" query ", 1)
    others = sorted(variables(head) - {query})
    blocks = []
    for variable in rng.sample(others, rng.randint(0, min(most, len(others)))):
        first = solve_compact(f"{head} query {variable} answer").split()[0]
        blocks.append(f"query {variable} answer {first}")
    return " ".join([head, *blocks, f"query {query} answer"])


def marked(prompt: str) -> str:
    """A trace prompt for a problem of the task's own depth: `query W answer` becomes `answer W answer`,
    which ``end_at_query`` shapes into `... answer W`, so only the marker before the query variable
    tells a trace from the task."""
    head, query = prompt.removesuffix(" answer").rsplit(" query ", 1)
    return f"{head} answer {query} answer"


def labelled(prompt: str, n_rules: int) -> bool:
    """Whether a training prompt gets conclusion-source targets: a task prompt, not a trace of another
    depth (whose deeper labels no early layer can hold) nor a marked trace (no query)."""
    return " query " in prompt and prompt.split(" facts ")[0].count(">") == n_rules


def trace_set(seed: int, n: int, depth: int, every: int, rule_order: str = "shuffled"):
    """``n`` training (prompts, traces) of depth-``depth`` problems and 1,000 held-out (prompt, trace)
    pairs; the traces list every ``every``-th ancestor of the query (1: all antecedents, breadth first)."""
    deep = generate_splits(seed, {"train": n, "val": 1000}, depth=depth, rule_order=rule_order)
    trace = trace_answer(every)
    prompts = list(deep["train"].prompt)
    return prompts, [trace(p) for p in prompts], [(p, trace(p)) for p in deep["val"].prompt]


def summarize(paths: list[str]) -> str:
    """A markdown table, one row per recorded run: its last evaluation and its best."""
    lines = ["| file | config | steps | val exact (last) | val exact (best) | first token (last) |",
             "|---|---|---|---|---|---|"]
    for path in paths:
        runs: list[list[dict]] = []  # a run's evaluations are contiguous, steps rising
        for line in open(path):
            record = json.loads(line)
            if "step" not in record:
                continue
            if not runs or record["step"] <= runs[-1][-1]["step"] or record["config"] != runs[-1][-1]["config"]:
                runs.append([])
            runs[-1].append(record)
        for records in runs:
            key = json.dumps(records[0]["config"], sort_keys=True)
            last = records[-1]
            best = max(r["val_exact"] for r in records)
            lines.append(f"| {path.rsplit('/', 1)[-1]} | `{key}` | {last['step']} | {last['val_exact']:.3f} "
                         f"| {best:.3f} | {last['val_first_token']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="print a table of recorded runs and exit")
    parser.add_argument("--config", default="{}")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stop-at-perfect", action="store_true")
    parser.add_argument("--test", type=int, default=0, metavar="N", help="at the end, exact match on N fresh "
                        "problems (none in the training or validation data) with its 95%% Wilson CI; with "
                        "--steps 0 and init_from, of a saved model")
    # dest is not `save`: nnsight, once imported, mounts a `save` method on every object, which would
    # shadow argparse's default of None
    parser.add_argument("--save", dest="save_dir", metavar="DIR", help="write the final model and tokenizer "
                        "there (a standard HF directory, which init_from and chain_probe.py load)")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    cfg = {**DEFAULTS, **json.loads(args.config)}
    if args.steps < 0 or (args.steps == 0 and not cfg["init_from"]):
        parser.error("--steps must be positive, or 0 to evaluate a saved model (init_from)")
    if cfg["multi_query"] and cfg["prompt_loss_weight"]:  # the prompt loss would teach `first-token query ...`
        parser.error("multi_query and prompt_loss_weight do not combine: the prompt loss would train every "
                     "inner answer to stop after its first token")
    if cfg["multi_query"] and cfg["backward_aux"]:  # trace prompts end `query W >`, not `answer`
        parser.error("multi_query and backward_aux do not combine: trace sequences have no `answer` to extend")
    if cfg["source_aux"] and (cfg["rule_order"] != "chain" or cfg["query_first"] or cfg["multi_query"]):
        parser.error("source_aux needs rule_order chain (labels computable from the prefix) and the plain prompt")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = build_logic_tokenizer()
    order = cfg["rule_order"]  # "chain": each chain's rules written in proof order (sample_problem)
    splits = generate_splits(cfg["data_seed"], {"train": cfg["train_size"], "val": 2000}, depth=cfg["depth"],
                             rule_order=order)
    if cfg["train_logop_share"] is not None:  # a training mix of query chains unlike the held-out one
        splits["train"] = generate_splits(cfg["data_seed"] + 1, {"train": cfg["train_size"]}, depth=cfg["depth"],
                                          logop_share=cfg["train_logop_share"], rule_order=order)["train"]
    prompts, answers = list(splits["train"].prompt), list(splits["train"].answer)
    for depth in cfg["extra_depths"]:
        n = int(cfg["train_size"] * cfg["extra_share"] / len(cfg["extra_depths"]))
        extra = generate_splits(cfg["data_seed"] + 1000 * depth, {"train": n}, depth=depth, rule_order=order)["train"]
        prompts += list(extra.prompt)
        answers += list(extra.answer)
    if cfg["trace_depth"] == cfg["depth"]:  # the trace prompt would be the task prompt with another answer
        parser.error("trace_depth must differ from depth: its prompts must not look like the task's "
                     "(trace_marker gives same-depth traces their own prompt)")
    if cfg["trace_marker"] and not (cfg["backward_aux"] and cfg["end_at_query"] and not cfg["trace_depth"]):
        parser.error("trace_marker needs backward_aux and end_at_query, and no trace_depth: it marks traces "
                     "of the task's own depth")
    held_out = {}  # name -> held-out (prompt, trace) pairs, prompts shaped like the task's below
    if cfg["backward_aux"]:  # extra sequences -> the query's backward trace (trace_every 2: every second ancestor)
        n = int(len(splits["train"]) * cfg["backward_aux"])
        if cfg["trace_depth"]:  # other-depth problems, prompts ending like the task's (at the query with end_at_query)
            aux_prompts, aux_answers, held_out["trace"] = trace_set(cfg["data_seed"] + 7, n, cfg["trace_depth"],
                                                                    cfg["trace_every"], order)
        elif cfg["trace_marker"]:  # the task's depth, `... answer W` (the task's prompts end `... query W`)
            aux_prompts, aux_answers, pairs = trace_set(cfg["data_seed"] + 7, n, cfg["depth"], cfg["trace_every"],
                                                        order)
            aux_prompts = [marked(p) for p in aux_prompts]
            held_out["trace"] = [(marked(p), t) for p, t in pairs]
        else:  # the task's own problems, prompts `... query W >`
            aux = list(splits["train"].prompt[:n])
            aux_prompts = [p.removesuffix(" answer") + " >" for p in aux]
            aux_answers = [trace_answer(cfg["trace_every"])(p) for p in aux]
        prompts += aux_prompts
        answers += aux_answers
    for depth, every, share in cfg["more_traces"]:  # further trace sets beside the first, e.g. [7, 2, 0.5]
        if depth in (cfg["depth"], cfg["trace_depth"]):  # one prompt shape, one kind of answer
            parser.error(f"more_traces depth {depth} is already the task's or trace_depth's")
        aux_prompts, aux_answers, held_out[f"trace{depth}"] = trace_set(cfg["data_seed"] + 7 + depth,
                                                                        int(len(splits["train"]) * share), depth, every,
                                                                        order)
        prompts += aux_prompts
        answers += aux_answers
    if cfg["multi_query"]:
        rng = random.Random(cfg["data_seed"])
        prompts = [with_earlier_queries(p, rng, cfg["multi_query"]) for p in prompts]

    def shaped(prompt: str) -> str:  # every prompt, trained or held out, takes the same shape
        if cfg["query_first"]:  # move "query X" to the front: every rule token can then see the query
            prompt = query_first(prompt)
        if cfg["end_at_query"]:  # drop the final "answer": the query variable itself predicts the proof
            prompt = prompt.removesuffix(" answer")
        return prompt

    train_prompts = [shaped(p) for p in prompts]
    train = encode(tokenizer, train_prompts, answers)
    if cfg["source_aux"]:
        n_rules = splits["val"].prompt.iloc[0].split(" facts ")[0].count(">")
        train.source_targets = conclusion_source_targets(tokenizer, train_prompts,
                                                         [labelled(p, n_rules) for p in prompts],
                                                         train.input_ids.shape[1])
    to_device = lambda d: type(d)(*(t.to(device) for t in (d.input_ids, d.prompt_lengths, d.lengths)))  # noqa: E731
    val = to_device(encode(tokenizer, [shaped(p) for p in splits["val"].prompt], list(splits["val"].answer)))
    val_traces = {name: to_device(encode(tokenizer, [shaped(p) for p, _ in pairs], [t for _, t in pairs]))
                  for name, pairs in held_out.items()}
    seen = to_device(type(train)(*(t[:2000] for t in (train.input_ids, train.prompt_lengths, train.lengths))))
    if cfg["init_from"]:  # warm start (a curriculum): a model saved by an earlier run's --save
        try:
            model = load_checkpoint(cfg["init_from"])[0]
        except ModelLoadError as error:
            parser.error(f"init_from: {error}")
        if model.config.n_layer < cfg["n_layer"]:  # grow a shallower model (its lookups sit low) to n_layer
            model = grown(model, cfg["n_layer"], cfg["seed"])
    else:
        model = build_logic_model(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], 128, 0.0, cfg["seed"], cfg["activation"])
    model = model.to(device)
    # a probe-like head trained beside the model, then dropped: it reads the residual stream after
    # source_aux_layer blocks at each rule's conclusion and names what that conclusion descends from
    aux_head = (source_head(model.config.n_embd, len(tokenizer)).to(device) if cfg["source_aux"]
                else torch.nn.Identity())
    parameters = list(model.parameters()) + list(aux_head.parameters())
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg["lr"], betas=(0.9, cfg["beta2"]))
    if args.steps:  # --steps 0 only evaluates (init_from)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=args.steps,
                                                       pct_start=cfg["warmup_frac"], anneal_strategy="cos",
                                                       cycle_momentum=False)
        stream = BatchStream(train, cfg["batch_size"], cfg["seed"], args.steps)
    inner_answer_id = tokenizer.convert_tokens_to_ids("answer") if cfg["multi_query"] else None
    start, train_time = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        tic = time.perf_counter()
        batch = stream[step - 1]
        ids = batch.input_ids.to(device)
        outputs = right_padded_outputs(model, ids, hidden_states=bool(cfg["source_aux"]))
        loss = training_loss(outputs.logits[:, :-1], batch, cfg["first_token_weight"], cfg["prompt_loss_weight"],
                             inner_answer_id)
        if cfg["source_aux"]:
            aux = source_loss(aux_head(outputs.hidden_states[cfg["source_aux_layer"]]), batch.source_targets)
            loss = loss + cfg["source_aux"] * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        schedule.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - tic
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            exact, first = teacher_forced(model, val)
            train_exact, _ = teacher_forced(model, seen)
            trace_metrics = {f"val_{name}_{metric}": value for name, data in val_traces.items()
                             for metric, value in zip(("exact", "first_token"), teacher_forced(model, data))}
            model.train()
            source_metrics = {"source_loss": round(aux.item(), 4)} if cfg["source_aux"] else {}
            print(json.dumps({"config": json.loads(args.config), "step": step, "loss": round(loss.item(), 4),
                              **source_metrics,
                              "val_exact": exact, "val_first_token": first, "train_exact": train_exact, **trace_metrics,
                              "train_s": round(train_time, 1), "wall_s": round(time.perf_counter() - start, 1)}),
                  flush=True)
            if args.stop_at_perfect and exact == 1.0:
                break
    model.eval()
    frame = splits["val"].assign(ok=exact_per_problem(model, val).cpu().numpy())
    print(json.dumps({"config": json.loads(args.config), "breakdown": breakdown(frame)}), flush=True)
    if args.test:  # fresh problems, none of them in the training or validation data
        fresh = generate_splits(cfg["data_seed"] + 99, {"test": args.test}, depth=cfg["depth"], rule_order=order,
                                exclude=set(prompts) | set(splits["val"].prompt))["test"]
        test = to_device(encode(tokenizer, [shaped(p) for p in fresh.prompt], list(fresh.answer)))
        frame = fresh.assign(ok=exact_per_problem(model, test).cpu().numpy())
        ci = wilson_ci(int(frame.ok.sum()), len(frame))
        print(json.dumps({"config": json.loads(args.config), "test_exact": float(ci.mean), "n_test": len(frame),
                          "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
                          "breakdown": breakdown(frame)}), flush=True)
    if args.save_dir:
        save_checkpoint(model.cpu(), tokenizer, args.save_dir)


if __name__ == "__main__":
    main()
