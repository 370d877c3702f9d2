"""Seconds per training step of the logic model, for each MLP activation, forward pass and
attention kernel, timed in one process.

    python -m benchmarks.bench_train_step
    python -m benchmarks.bench_train_step --activations gelu gelu_new --passes shared --attention eager

A step is the pipeline's: the LightningModule's training loss (source head included when
``logic.train.source_aux`` is set), backward, gradient clipping and the AdamW update, on batches
from the same batch stream as training. The ``shared`` pass runs each prefix that rows of a batch
share (query twins) once; the ``plain`` pass runs every row whole (modules/studies/logic/training/shared_prefix.py).
Repetitions interleave the variants, so drift in the machine's speed falls on all of them alike;
the figures are medians over repetitions, with ratios against the plain pass with the sdpa kernel
(the training step before either change) of the same activation. One MLflow run holds them.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import replace

import mlflow
import torch

from modules.studies.logic.data import splits_from_params
from modules.studies.logic.model import ACTIVATIONS
from modules.core.tracking import tracked_run
from modules.studies.logic.training.timing import StepTimer
from modules.studies.logic.training.train import TRAINING_ATTENTION, TrainConfig, TrainingData
from modules.core.params import apply_overrides, section
from modules.core.stage import run
from modules.studies.logic import STUDY

PASSES = ("shared", "plain")
BASELINE = ("plain", "sdpa")  # pass and attention of the training step before either speed-up


def variant_name(activation: str, training_pass: str, attention: str) -> str:
    return f"{activation}/{training_pass}/{attention}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--activations", nargs="+", choices=ACTIVATIONS,
                        help="MLP activations to time (default: logic.train.activation)")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    parser.add_argument("--attention", nargs="+", default=list(TRAINING_ATTENTION), choices=TRAINING_ATTENTION)
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
    logic = apply_overrides(section("logic"), args.overrides, "logic", ("data", "train"))
    data = {**logic["data"], "sizes": {"train": args.train_size, "val": 200, "test": 200},
            "traces": {**logic["data"]["traces"], "size": 0}}
    config = TrainConfig.from_params(logic["train"])
    activations = args.activations or [config.activation]
    torch.set_num_threads(args.threads)
    splits = splits_from_params(data)
    data = TrainingData.from_frames(splits["train"], splits["val"], config)
    train, val, groups = data.train, data.val, data.groups
    n_batches = args.warmup + args.reps * args.steps
    variants = list(itertools.product(activations, args.passes, args.attention))
    timers = {variant_name(*v): StepTimer(replace(config, activation=v[0], attention=v[2]), 0, train, val, groups,
                                          n_batches, shared_prefix=v[1] == "shared") for v in variants}
    for timer in timers.values():
        if args.warmup:
            timer(0, args.warmup)
    seconds = {name: [] for name in timers}
    for rep in range(args.reps):
        for name, timer in timers.items():
            seconds[name].append(timer(args.warmup + rep * args.steps, args.steps))
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    run_params = {**config.as_dict(), "threads": args.threads, "reps": args.reps, "steps": args.steps,
                  "sequence_length": train.input_ids.shape[1], "overrides": " ".join(args.overrides)}
    with tracked_run(STUDY, "bench-train-step", run_params, tags={"benchmark": "train_step"}):
        mlflow.log_metrics({f"step_s_{name.replace('/', '_')}": m for name, m in medians.items()})
    print(f"batch {config.batch_size} x {train.input_ids.shape[1]} tokens, {args.threads} threads, "
          f"median of {args.reps} repetitions of {args.steps} steps")
    for (activation, _, _), (name, median) in zip(variants, medians.items()):
        baseline = variant_name(activation, *BASELINE)
        ratio = f"{median / medians[baseline]:.3f} x {baseline}" if baseline in medians else ""
        spread = ", ".join(f"{s:.4f}" for s in seconds[name])
        print(f"{name:>30}: {median:.4f} s/step  {ratio}  ({spread})")


if __name__ == "__main__":
    run(main)
