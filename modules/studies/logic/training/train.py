"""Train the logic model with Lightning: resumable checkpoints, early stop at perfect accuracy,
metrics to MLflow through Lightning's MLFlowLogger attached to an existing run."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint

from modules.core.params import load, param
from modules.core.hf_dir import save_checkpoint
from modules.training.callbacks import StepReport
from modules.studies.logic.model import ACTIVATIONS
from modules.studies.logic.tokenizer import build_logic_tokenizer
from modules.studies.logic.training.module import LogicLM
from modules.studies.logic.training.shared_prefix import shared_prefix_lengths
from modules.studies.logic.training.sequences import conclusion_source_targets
from modules.training.sequences import BatchStream, EncodedSequences, OrderedBatches, collate_single, encode


# Both compute the same function; on sequences of about 30 tokens on a CPU, eager attention's
# plain matmuls take less time than the fused kernel (benchmarks/bench_train_step.py).
TRAINING_ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = param(3, range=(1, 48))
    n_head: int = param(3, range=(1, 64))
    n_embd: int = param(96, range=(3, 4096))
    dropout: float = param(0.0, range=(0.0, 0.99))
    activation: str = param("gelu", choices=ACTIVATIONS)  # the MLP's
    attention: str = param("eager", choices=TRAINING_ATTENTION)  # the training pass's kernel; the saved model loads sdpa
    lr: float = param(3e-3, range=(1e-6, 1.0))
    weight_decay: float = param(0.01, range=(0.0, 10.0))
    warmup_frac: float = param(0.1, range=(0.0, 0.9))
    beta2: float = param(0.98, range=(0.5, 0.99999))
    first_token_weight: float = param(1.0, range=(0.0, 100.0))
    prompt_loss_weight: float = param(0.0, range=(0.0, 100.0))
    source_aux: float = param(0.0, range=(0.0, 100.0))  # weight of the conclusion-source head's loss (LogicLM); 0 = no head
    source_aux_layer: int = param(2, range=(1, 48))  # the residual stream it reads: after this many blocks
    source_aux_query: bool = param(False)  # the head also names the query variable's source (make paper-format)
    balance_query_chains: bool = param(False)
    shared_prefix: bool = param(True)  # run each prefix that rows of a batch share once (shared_prefix.py)
    batch_size: int = param(128, range=(1, 1 << 16))
    max_steps: int = param(6000, range=(1, 10**8))
    val_every: int = param(250, range=(1, 10**8))
    val_batch_size: int = param(1000, range=(1, 1 << 16))
    grad_clip: float = param(1.0, range=(0.0, 1e6))
    ema_decay: float = param(0.0, range=(0.0, 0.999999))  # an EMA of the weights from the learning-rate peak on; 0 = none
    stop_on_perfect: bool = param(True)
    perfect_patience: int = param(1, range=(1, 1000))
    # The query-reading check: a run whose first validation from step query_check_step on scores
    # below query_check_min has not learned to read the query (such runs plateau at 0.64-0.76;
    # notebook, "Restarts"). It stops there and training starts again from a fresh initialisation
    # and batch order (restart_seed), at most max_restarts times. 0, or a step the schedule does not
    # reach before its end: no check.
    query_check_step: int = param(0, range=(0, 10**8))
    query_check_min: float = param(0.9, range=(0.0, 1.0))
    # A run below query_check_min whose validation rose by at least query_check_rise over the last
    # query_check_window steps is judged again at its next validation. 0: no grace. Tried on four
    # paper-format runs abandoned while rising: it rescued none (notebook, "sixteenth session").
    query_check_rise: float = param(0.0, range=(0.0, 1.0))
    query_check_window: int = param(1000, range=(1, 10**8))
    # The stall check: a run with no perfect validation by perfect_check_step reads the query but
    # stalls short of 100% (seed 4 sat at 0.97-0.99 from step 1,500 on; notebook, "Restarts"). It
    # is abandoned and restarted the same way. 0: no check.
    perfect_check_step: int = param(0, range=(0, 10**8))
    max_restarts: int = param(2, range=(0, 100))
    # Machine settings, not the recipe: params.yaml may leave them out.
    accelerator: str = param("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"), optional=True)
    devices: Any = param(1, optional=True)
    strategy: str = param("auto", optional=True)
    threads: int = param(0, range=(0, 1024), optional=True)  # CPU threads for torch; 0 = one per core

    def __post_init__(self):
        if self.source_aux_layer > self.n_layer:
            raise ValueError(f"train.source_aux_layer must be an int in [1, train.n_layer={self.n_layer}], "
                             f"got {self.source_aux_layer!r}")
        if self.source_aux_query and not self.source_aux:
            raise ValueError("train.source_aux_query labels the query for the source head: it needs train.source_aux > 0")
        if self.n_embd % self.n_head:
            raise ValueError(f"train.n_embd ({self.n_embd}) must be divisible by train.n_head ({self.n_head})")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "logic.train", complete: bool = False
                    ) -> "TrainConfig":
        """Checked by the params schema; ``complete`` requires every recipe key (params.yaml)."""
        return load(cls, dict(params), where, complete=complete)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerfectAccuracyStop(Callback):
    """Record the validation curve and the wall time to the first perfect validation score;
    stop after ``patience`` perfect validations in a row. Steps and seconds count from
    ``step_offset`` and ``time_offset``: what abandoned runs of the same training spent before."""

    def __init__(self, patience: int = 1, stop: bool = True, step_offset: int = 0, time_offset: float = 0.0,
                 attempt: int = 0):
        self.patience, self.stop = patience, stop
        self.step_offset, self.time_offset, self.attempt = step_offset, time_offset, attempt
        self.start = time.perf_counter()
        self.streak = 0
        self.time_to_perfect: float | None = None
        self.step_to_perfect: int | None = None
        self.history: list[dict[str, float]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        # After a resume, the clock continues from the time already spent.
        self.start = time.perf_counter() - (self.history[-1]["elapsed_s"] - self.time_offset if self.history else 0.0)

    def state_dict(self) -> dict:
        return {"history": self.history, "time_to_perfect": self.time_to_perfect,
                "step_to_perfect": self.step_to_perfect, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.time_to_perfect, self.step_to_perfect = state["time_to_perfect"], state["step_to_perfect"]
        self.streak = state["streak"]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get("val_exact_match")
        if score is None:
            return
        loss = trainer.callback_metrics.get("train_loss")
        elapsed = self.time_offset + time.perf_counter() - self.start
        self.history.append({"step": self.step_offset + trainer.global_step, "elapsed_s": elapsed,
                             "val_exact_match": float(score),
                             "train_loss": float(loss) if loss is not None else float("nan"), "attempt": self.attempt})
        perfect = float(score) >= 1.0
        self.streak = self.streak + 1 if perfect else 0
        if perfect and self.time_to_perfect is None:
            self.time_to_perfect = elapsed
            self.step_to_perfect = self.step_offset + trainer.global_step
            for logger in trainer.loggers:
                logger.log_metrics({"time_to_perfect_val_s": self.time_to_perfect,
                                    "step_to_perfect_val": self.step_to_perfect}, step=trainer.global_step)
        if self.stop and self.streak >= self.patience:
            trainer.should_stop = True


class RestartCheck(Callback):
    """Stop a run whose validation score at its first validation from ``step`` on (before the
    schedule's end) is below ``minimum``; with ``best``, the run's best score so far is judged.
    ``failed`` then holds the check's name, the step and the score. With ``rise``, a run below
    ``minimum`` whose score rose by at least ``rise`` over the last ``window`` steps is still
    learning: it is judged again at its next validation. A run that passes is not checked again."""

    def __init__(self, name: str, step: int, minimum: float, best: bool = False, rise: float = 0.0,
                 window: int = 1000):
        self.name, self.step, self.minimum, self.best = name, step, minimum, best
        self.rise, self.window = rise, window
        self.checked = False
        self.scores: list[tuple[int, float]] = []  # (step, score) of every validation so far
        self.failed: dict | None = None

    @property
    def state_key(self) -> str:  # two checks in one trainer keep their states apart in a checkpoint
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict:
        return {"checked": self.checked, "scores": self.scores}

    def load_state_dict(self, state: dict) -> None:
        self.checked = state["checked"]  # a checkpoint resumes only under the same code (run_fingerprint)
        self.scores = [tuple(pair) for pair in state["scores"]]

    def risen(self, step: int, score: float) -> float | None:
        """How much the score rose since the last validation at least ``window`` steps back
        (None: no validation that far back)."""
        earlier = [past for past_step, past in self.scores if past_step <= step - self.window]
        return score - earlier[-1] if earlier else None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        score = float(trainer.callback_metrics["val_exact_match"])
        step = trainer.global_step
        rise = self.risen(step, score)
        self.scores.append((step, score))
        if self.checked or step < self.step or step >= trainer.max_steps:
            return
        judged = max(past for _, past in self.scores) if self.best else score
        if judged >= self.minimum:
            self.checked = True
        elif not (self.rise and rise is not None and rise >= self.rise):
            self.checked = True
            self.failed = {"check": self.name, "step": step, "val_exact_match": judged}
            trainer.should_stop = True


def restart_checks(config: TrainConfig) -> list[RestartCheck]:
    """The checks a run may be abandoned by: it has not learned to read the query by
    ``query_check_step`` (and is no longer rising by ``query_check_rise``), or it has had no
    perfect validation by ``perfect_check_step``."""
    checks = []
    if config.query_check_step:
        checks.append(RestartCheck("query", config.query_check_step, config.query_check_min,
                                   rise=config.query_check_rise, window=config.query_check_window))
    if config.perfect_check_step:
        checks.append(RestartCheck("perfect", config.perfect_check_step, 1.0, best=True))
    return checks


def restart_seed(seed: int, attempt: int) -> int:
    """The seed of a training's ``attempt``-th run: the seed itself first, then one drawn from
    (seed, attempt), so that restarts are as reproducible as the first run."""
    return seed if attempt == 0 else int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


class AverageFromPeak(EMAWeightAveraging):
    """Lightning's EMA of the weights, updated from the learning-rate peak (the end of warmup) on.
    Validation, checkpoints and the final model use the average once it has one update; before
    that, the live weights (Lightning would swap in the untrained copy it starts from)."""

    def __init__(self, decay: float, start_step: int):
        super().__init__(decay=decay, update_starting_at_step=start_step)

    def _averaging(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    # No update happens during validation, so the end swaps back exactly when the start swapped.
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._averaging():
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._averaging():
            self._swap_models(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._averaging():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._averaging():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if "averaging_state" in checkpoint:  # else the average has not started: nothing to restore
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def balance_query_chains(frame):
    """Repeat the rows of each rarer query chain so every chain is about equally common.

    An experiment, off by default: with the 80/20 LogOp/linear mix the model learns LogOp
    queries and not linear ones; balanced batches learn some of both but score worse on the
    held-out mix (val exact match 0.61 against 0.80 after 6,000 steps; README). Row order is
    kept; the batch stream shuffles.
    """
    counts = frame["query_chain"].value_counts()
    repeats = frame["query_chain"].map(lambda chain: max(1, round(counts.max() / counts[chain])))
    return frame.loc[frame.index.repeat(repeats.to_numpy())]


def rules_and_facts_groups(frame) -> torch.Tensor:
    """A group number per row, in order of first appearance: rows with the same rules and facts
    (query twins) share one. A row that ``balance_query_chains`` repeated gets a group of its own."""
    shared = frame["prompt"].str.rsplit(" query ", n=1).str[0]
    repeated = frame.index.duplicated()
    key = shared.where(~repeated, shared + "\0" + pd.Series(range(len(frame)), index=frame.index).astype(str))
    return torch.as_tensor(pd.factorize(key)[0], dtype=torch.long)


def encode_frame(tokenizer, frame) -> EncodedSequences:
    return encode(tokenizer, frame["prompt"].tolist(), frame["answer"].tolist())


def make_loaders(train: EncodedSequences, val: EncodedSequences, config: TrainConfig, seed: int,
                 groups: torch.Tensor | None = None):
    world = config.devices if isinstance(config.devices, int) and config.devices > 0 else 1
    train_loader = torch.utils.data.DataLoader(
        BatchStream(train, config.batch_size, seed, n_batches=config.max_steps * world, groups=groups),
        batch_size=None, shuffle=False, collate_fn=collate_single)
    val_loader = torch.utils.data.DataLoader(
        OrderedBatches(val, config.val_batch_size), batch_size=None, shuffle=False, collate_fn=collate_single)
    return train_loader, val_loader


def build_trainer(config: TrainConfig, ckpt_dir: Path | None, loggers: Sequence = (),
                  callbacks: Sequence[Callback] = (), label: str = "train", step_offset: int = 0) -> pl.Trainer:
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.accelerator is {config.accelerator!r} but this machine has no visible GPU; "
                         "use 'auto' or 'cpu'")
    all_callbacks = [*callbacks, StepReport(label, step_offset=step_offset)]
    if config.ema_decay:
        all_callbacks.append(AverageFromPeak(config.ema_decay, int(config.warmup_frac * config.max_steps)))
    if ckpt_dir is not None:
        # Saved at the end of every validation, so a checkpoint holds its own step's score and a
        # resumed curve misses none. No monitor: with one, Lightning writes last.ckpt only when the
        # score improves, and a run would resume from its best validation, not its latest.
        all_callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", save_last=True,
                                             save_on_train_epoch_end=False, save_top_k=1))
    return pl.Trainer(
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
        max_steps=config.max_steps, val_check_interval=min(config.val_every, config.max_steps),
        check_val_every_n_epoch=None,
        gradient_clip_val=config.grad_clip or None, logger=list(loggers) or False,
        enable_checkpointing=ckpt_dir is not None, callbacks=all_callbacks, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        log_every_n_steps=min(50, config.val_every), default_root_dir=str(ckpt_dir) if ckpt_dir else None)


@dataclass
class TrainResult:
    module: LogicLM
    time_to_perfect_val_s: float | None  # seconds and steps spent, abandoned runs included
    step_to_perfect_val: int | None
    steps: int                           # the kept run's steps
    wall_s: float
    val_exact_match: float
    history: list[dict[str, float]]      # every run's validations; "step" counts the steps spent
    seed: int = 0                        # the kept run's seed (restart_seed)
    restarts: list[dict] = field(default_factory=list)  # per abandoned run: attempt, seed, step, val_exact_match


# Settings that change neither the batches nor the updates: the thread count, when to stop, and
# how many restarts a check may ask for (each run's own seed is fingerprinted).
NOT_FINGERPRINTED = ("threads", "stop_on_perfect", "perfect_patience", "max_restarts")


def run_fingerprint(config: TrainConfig, seed: int, train: EncodedSequences, val: EncodedSequences) -> str:
    """What a checkpoint was trained on: settings (those in NOT_FINGERPRINTED aside), seed, the
    encoded data and the training and model code. A checkpoint resumes only under the same
    fingerprint."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in config.as_dict().items() if k not in NOT_FINGERPRINTED}
    digest.update(json.dumps({"config": settings, "seed": seed}, sort_keys=True, default=str).encode())
    for tensor in (train.input_ids, train.prompt_lengths, train.source_targets, val.input_ids, val.prompt_lengths):
        if tensor is not None:
            digest.update(tensor.numpy().tobytes())
    code = Path(__file__).resolve().parents[1]
    for source in sorted([*code.glob("training/*.py"), *code.glob("models/*.py")]):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


RUN_FILE = "run.json"


def read_run_record(ckpt_dir: Path) -> dict:
    try:
        return json.loads((Path(ckpt_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def resumable_checkpoint(ckpt_dir: Path, fingerprint: str, config: TrainConfig) -> Path | None:
    """``last.ckpt`` of an unfinished run with this fingerprint, or of one that stopped early at
    ``stopped_at_streak`` perfect validations in a row when ``config`` would train on past that.
    Anything else in ``ckpt_dir`` (a finished run, other settings, other code or data) is cleared
    so training starts afresh."""
    ckpt_dir = Path(ckpt_dir)
    last, state = ckpt_dir / "last.ckpt", read_run_record(ckpt_dir)
    streak = state.get("stopped_at_streak")
    goes_further = (streak is not None and (not config.stop_on_perfect or config.perfect_patience > streak))
    if last.is_file() and state.get("fingerprint") == fingerprint and (not state.get("complete") or goes_further):
        return last
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # DDP workers see what rank 0 decided
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint, "complete": False}))
    return None


def encode_for_training(tokenizer, train_frame, val_frame, config: TrainConfig
                        ) -> tuple[EncodedSequences, EncodedSequences]:
    """The training and validation sequences, with the source-head labels ``config`` asks for."""
    train, val = encode_frame(tokenizer, train_frame), encode_frame(tokenizer, val_frame)
    if config.source_aux:  # label the task's problems; traces of another depth have chains too long
        task_depth = int(val_frame["depth"].iloc[0])
        train.source_targets = conclusion_source_targets(tokenizer, train_frame["prompt"].tolist(),
                                                         (train_frame["depth"] == task_depth).tolist(),
                                                         train.input_ids.shape[1], at_query=config.source_aux_query)
    return train, val


@dataclass
class TrainingData:
    """Encoded training and validation sequences with the batch groups, as ``config`` wants them:
    built once and reused by every run of the same data (a tuning study's trials)."""
    train: EncodedSequences
    val: EncodedSequences
    groups: torch.Tensor
    balanced: bool
    source_labels: bool
    query_labels: bool = False

    @classmethod
    def from_frames(cls, train_frame, val_frame, config: TrainConfig) -> "TrainingData":
        if config.balance_query_chains:
            train_frame = balance_query_chains(train_frame)
        train, val = encode_for_training(build_logic_tokenizer(), train_frame, val_frame, config)
        groups = rules_and_facts_groups(train_frame)
        if config.shared_prefix:
            train.shared_lengths = shared_prefix_lengths(train.input_ids, train.prompt_lengths, groups)
        return cls(train, val, groups, config.balance_query_chains, bool(config.source_aux), config.source_aux_query)

    def suits(self, config: TrainConfig) -> bool:
        return (self.balanced == config.balance_query_chains and self.source_labels == bool(config.source_aux)
                and self.query_labels == config.source_aux_query
                and (self.train.shared_lengths is not None) == config.shared_prefix)


def new_logic_module(config: TrainConfig, seed: int, train: EncodedSequences, val: EncodedSequences) -> LogicLM:
    """A freshly initialised LightningModule for ``config``, with room for the longest sequence."""
    n_positions = 1 << int(max(train.input_ids.shape[1], val.input_ids.shape[1]) - 1).bit_length()
    return LogicLM(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                   n_positions=n_positions, dropout=config.dropout, lr=config.lr,
                   weight_decay=config.weight_decay, warmup_frac=config.warmup_frac, beta2=config.beta2,
                   max_steps=config.max_steps,
                   first_token_weight=config.first_token_weight,
                   prompt_loss_weight=config.prompt_loss_weight, seed=seed,
                   source_aux=config.source_aux, source_aux_layer=config.source_aux_layer,
                   activation=config.activation, attention=config.attention)


def train_logic_model(train_frame, val_frame, config: TrainConfig, seed: int, ckpt_dir: Path | None = None,
                      loggers: Sequence = (), callbacks: Sequence[Callback] = (),
                      data: TrainingData | None = None, label: str = "train") -> TrainResult:
    """Fit a fresh model (or resume an interrupted run with the same fingerprint from
    ``ckpt_dir/last.ckpt``) and return it with its timings. ``data``, the frames already encoded
    (``TrainingData.from_frames``), saves encoding them again when it suits ``config``.

    With ``config.query_check_step`` or ``perfect_check_step``, a run that fails a check is abandoned and
    training starts again with ``restart_seed(seed, attempt)``; restart ``k`` keeps its checkpoints
    in ``ckpt_dir/restart<k>`` and an abandoned run's record in its ``run.json``, so an interrupted
    training resumes in the run it was in."""
    torch.set_num_threads(config.threads or max(1, os.cpu_count() or 1))
    if data is None or not data.suits(config):
        data = TrainingData.from_frames(train_frame, val_frame, config)
    restarts, history, steps_spent, seconds_spent = [], [], 0, 0.0
    attempts = config.max_restarts + 1 if restart_checks(config) else 1
    for attempt in range(attempts):
        attempt_seed = restart_seed(seed, attempt)
        attempt_dir = None if ckpt_dir is None else Path(ckpt_dir) / (f"restart{attempt}" if attempt else "")
        attempt_label = label if attempt == 0 else f"{label} (restart {attempt}, seed {attempt_seed})"
        # the last run allowed trains to the end whatever its score
        result, failed = _fit(config, attempt_seed, data, attempt_dir, loggers, callbacks, attempt_label,
                              attempt, steps_spent, seconds_spent, check=attempt < attempts - 1)
        history += result.history
        if failed is None:
            break
        restarts.append({"attempt": attempt, "seed": attempt_seed, **failed})
        why = (f"validation exact match {failed['val_exact_match']:.4f} at step {failed['step']} is below "
               f"{config.query_check_min}: the run has not learned to read the query" if failed["check"] == "query"
               else f"no perfect validation by step {failed['step']} (best {failed['val_exact_match']:.4f}): "
                    "the run has stalled")
        print(f"{label}: {why}; restarting with seed "
              f"{restart_seed(seed, attempt + 1)}", flush=True)
        steps_spent, seconds_spent = steps_spent + failed["step"], result.history[-1]["elapsed_s"]
    result.history, result.restarts, result.seed = history, restarts, attempt_seed
    result.wall_s += seconds_spent
    return result


def _fit(config: TrainConfig, seed: int, data: TrainingData, ckpt_dir: Path | None, loggers: Sequence,
         callbacks: Sequence[Callback], label: str, attempt: int, step_offset: int, time_offset: float,
         check: bool) -> tuple[TrainResult, dict | None]:
    """One run of a training: its result, and the query-reading check's failure (or None)."""
    train, val = data.train, data.val
    fingerprint = run_fingerprint(config, seed, train, val) if ckpt_dir is not None else None
    record = read_run_record(ckpt_dir) if ckpt_dir is not None else {}
    if record.get("fingerprint") == fingerprint and record.get("failed_check"):  # abandoned before an interruption
        return TrainResult(None, None, None, record["failed_check"]["step"], 0.0,
                           record["failed_check"]["val_exact_match"], record["history"], seed), record["failed_check"]
    pl.seed_everything(seed, workers=True, verbose=False)
    module = new_logic_module(config, seed, train, val)
    stopper = PerfectAccuracyStop(config.perfect_patience, config.stop_on_perfect, step_offset, time_offset, attempt)
    check = restart_checks(config) if check else []
    trainer = build_trainer(config, ckpt_dir, loggers, [stopper, *check, *callbacks], label, step_offset)
    train_loader, val_loader = make_loaders(train, val, config, seed, data.groups)
    resume = resumable_checkpoint(ckpt_dir, fingerprint, config) if ckpt_dir is not None else None
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True if resume else None)
    wall = time.perf_counter() - start
    failed = next((c.failed for c in check if c.failed is not None), None)
    stopped_early = config.stop_on_perfect and stopper.streak >= config.perfect_patience
    if ckpt_dir is not None and trainer.is_global_zero and (trainer.global_step >= config.max_steps or stopped_early
                                                            or failed is not None):
        # a later call with these settings trains afresh, not reloads this; one that trains on past
        # an early stop (stop_on_perfect=false, a longer patience) resumes it; an abandoned run is
        # remembered, so that a rerun goes straight to its restart
        stopped_at = stopper.streak if trainer.global_step < config.max_steps and failed is None else None
        record = {"fingerprint": fingerprint, "complete": True, "stopped_at_streak": stopped_at}
        if failed is not None:
            record.update(failed_check=failed, history=stopper.history)
        (Path(ckpt_dir) / RUN_FILE).write_text(json.dumps(record))
    score = trainer.callback_metrics.get("val_exact_match")
    return TrainResult(module, stopper.time_to_perfect, stopper.step_to_perfect, trainer.global_step, wall,
                       float(score) if score is not None else float("nan"), stopper.history, seed), failed


def export_model(module: LogicLM, out_dir: Path) -> None:
    """Save the trained network as a standard HF directory with its tokenizer."""
    save_checkpoint(module.model, build_logic_tokenizer(), out_dir)
