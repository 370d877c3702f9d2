"""Seconds per training step of the logic model, for each MLP activation, timed in one process.

    python -m benchmarks.bench_train_step
    python -m benchmarks.bench_train_step --set logic.data.rule_order=chain --set logic.train.source_aux=1.0 \\
        --set 'logic.data.query_twins=[train]' --set logic.data.prompt_end=query

A step is the pipeline's: the LightningModule's training loss (source head included when
``logic.train.source_aux`` is set), backward, gradient clipping and the AdamW update, on batches
from the same batch stream as training. Repetitions interleave the activations, so drift in the
machine's speed falls on all of them alike; the figures are medians over repetitions, with
ratios against GPT-2's tanh GELU. One MLflow run holds them.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import mlflow
import torch

from benchmarks.bench_training import apply_overrides
from modules.data.logic import splits_from_params
from modules.models.logic_model import ACTIVATIONS
from modules.tracking.mlflow_tracking import tracked_run
from modules.training.sequences import BatchStream
from modules.training.train import TrainConfig, TrainingData, new_logic_module
from pipelines._stage import LOGIC_STUDY, params, run

BASELINE = "gelu_new"


class StepTimer:
    """A fresh model with its optimizer and batch stream; calling it runs ``n`` training steps
    from batch ``first`` on and returns seconds per step."""

    def __init__(self, config: TrainConfig, seed: int, train, val, groups, n_batches: int):
        self.config = config
        self.module = new_logic_module(config, seed, train, val)
        self.optimizer = self.module.configure_optimizers()["optimizer"]
        self.stream = BatchStream(train, config.batch_size, seed, n_batches, groups)

    def __call__(self, first: int, n: int) -> float:
        start = time.perf_counter()
        for index in range(first, first + n):
            loss = self.module.training_step(self.stream[index], index)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
            self.optimizer.step()
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per activation")
    parser.add_argument("--steps", type=int, default=10, help="training steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=4000, help="training problems generated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a logic.data or logic.train key of params.yaml (repeatable)")
    args = parser.parse_args()
    if args.reps < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError("--reps, --steps and --threads must be >= 1 and --warmup >= 0")
    logic = apply_overrides(params("logic"), args.overrides)
    data = {**logic["data"], "sizes": {"train": args.train_size, "val": 200, "test": 200},
            "traces": {**logic["data"]["traces"], "size": 0}}
    config = TrainConfig.from_params(logic["train"])
    torch.set_num_threads(args.threads)
    splits = splits_from_params(data)
    data = TrainingData.from_frames(splits["train"], splits["val"], config)
    train, val, groups = data.train, data.val, data.groups
    n_batches = args.warmup + args.reps * args.steps
    timers = {a: StepTimer(replace(config, activation=a), 0, train, val, groups, n_batches)
              for a in args.activations}
    for timer in timers.values():
        if args.warmup:
            timer(0, args.warmup)
    seconds = {a: [] for a in timers}
    for rep in range(args.reps):
        for activation, timer in timers.items():
            seconds[activation].append(timer(args.warmup + rep * args.steps, args.steps))
    medians = {a: statistics.median(v) for a, v in seconds.items()}
    run_params = {**config.as_dict(), "threads": args.threads, "reps": args.reps, "steps": args.steps,
                  "sequence_length": train.input_ids.shape[1], "overrides": " ".join(args.overrides)}
    with tracked_run(LOGIC_STUDY, "bench-train-step", run_params, tags={"benchmark": "train_step"}):
        mlflow.log_metrics({f"step_s_{a}": m for a, m in medians.items()})
    print(f"batch {config.batch_size} x {train.input_ids.shape[1]} tokens, {args.threads} threads, "
          f"median of {args.reps} repetitions of {args.steps} steps")
    for activation, median in medians.items():
        ratio = f"{median / medians[BASELINE]:.3f} x {BASELINE}" if BASELINE in medians else ""
        spread = ", ".join(f"{s:.4f}" for s in seconds[activation])
        print(f"{activation:>18}: {median:.4f} s/step  {ratio}  ({spread})")


if __name__ == "__main__":
    run(main)
