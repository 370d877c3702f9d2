"""Fine-tune a pretrained causal LM on study 1's natural-language flip prompts, with Lightning.

The base models are at chance on the first proof token (docs/logic/llm.md), so there is no
circuit to find in them; this makes models that solve the task. The sequences are the LLM
study's own examples (``build_examples``: both query directions of every pair, the proof
tokenised as the study scores it), so a fine-tuned model is evaluated on exactly what it learnt.

* **Loss**: cross-entropy on the proof (answer) tokens only, the first one optionally weighted
  (``first_token_weight``); the output layer runs on the positions that predict an answer token
  and nowhere else (a 262k-token vocabulary over every position costs more than the rest of a
  270M model).
* **Method**: ``lora`` (a hand-written low-rank update of the named linear layers, merged into
  the weights at the end) or ``full`` (every weight but the token embeddings, unless
  ``train_embeddings``).
* **Batches**: both query directions of a pair sit in the same batch (same rules, facts and
  shots, a different question and answer), right-padded.
* **Validation**, every ``val_every`` steps and once before training: on held-out pairs, in one
  teacher-forced pass, the first-token accuracy (``val_first_token``, the argmax over the
  tokens greedy decoding may pick) and the proof exact match (``val_proof``, every answer
  token the argmax given the gold prefix, which is exactly greedy decoding's exact match).
* **Stopping**: at ``target_accuracy``, after ``patience`` validations without a better
  first-token accuracy (Lightning's ``EarlyStopping``), at ``max_steps`` or after
  ``max_minutes``. The best validation's weights are the result.
* **Output**: a plain HF directory (safetensors, tokenizer, generation config, the base
  model's licence files, ``finetune.json``), written atomically.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import Tensor, nn

from modules.analysis.pairs import PairExamples
from modules.engine.patchscope import suppressed_tokens  # the ids generate() never picks: scored the same way
from modules.engine.probes import quiet_lightning
from modules.core.hf_dir import save_model_dir
from modules.core.io import atomic_dir, write_json
from modules.core.params import load, param
from modules.studies.logic import STUDY
from modules.studies.logic.data.dataset import generate_flip_pairs
from modules.studies.logic.data.generator import MAX_DEPTH, MIN_DEPTH
from modules.studies.logic.data.syntax import OPERATORS
from modules.studies.logic.llm import build_examples

METHODS = ("lora", "full")
PRECISIONS = ("32-true", "bf16-mixed")
IGNORE = -100
LICENCE_FILES = ("LICENSE*", "LICENCE*", "NOTICE*", "*TERMS*")


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class FinetuneData:
    """Training and validation pairs: ``generate_flip_pairs`` with seeds of their own, every
    operator in ``operators`` equally, ``shots`` solved examples before each problem."""
    seed: int = param(1, range=(0, 2**32 - 1))       # the training pairs'
    val_seed: int = param(2, range=(0, 2**32 - 1))   # the validation pairs'
    train_pairs: int = param(1000, range=(1, 10**7))  # per operator; 2 prompts each
    val_pairs: int = param(32, range=(1, 10**6))      # per operator
    shots: int = param(2, range=(0, 64))
    depth: int = param(2, range=(MIN_DEPTH, MAX_DEPTH))
    operators: tuple[str, ...] = param(("or", "and"), choices=OPERATORS)

    def __post_init__(self):
        if self.seed == self.val_seed:
            raise ValueError(f"seed and val_seed must differ, got {self.seed} for both")
        if not self.operators or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"operators must be a non-empty list of distinct values, got {list(self.operators)}")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], where: str = "logic_llm.finetune.data",
                     complete: bool = False) -> "FinetuneData":
        return load(cls, dict(params), where, complete=complete)


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = param("lora", choices=METHODS)
    lora_rank: int = param(16, range=(1, 4096))
    lora_alpha: float = param(32.0, range=(1e-6, 1e6))   # the update is scaled by alpha / rank
    lora_targets: tuple[str, ...] = param(("q_proj", "k_proj", "v_proj", "o_proj"))  # linear layers, by name
    train_embeddings: bool = param(False)                # full: the (tied) token embeddings train too
    lr: float = param(1e-3, range=(1e-8, 1.0))
    weight_decay: float = param(0.0, range=(0.0, 10.0))
    warmup_steps: int = param(10, range=(0, 10**7))      # linear warmup, then cosine decay to lr / 10
    batch_size: int = param(8, range=(2, 1 << 14))       # prompts per step: batch_size / 2 pairs
    max_steps: int = param(400, range=(1, 10**8))
    max_minutes: float = param(15.0, range=(0.01, 10**6))  # wall clock of the fit, validations included
    val_every: int = param(25, range=(1, 10**8))
    val_batch_size: int = param(16, range=(1, 1 << 14))
    patience: int = param(4, range=(1, 10**4))           # validations without a better first-token accuracy
    target_accuracy: float = param(1.0, range=(0.0, 1.0))  # stop once val first-token accuracy reaches it
    first_token_weight: float = param(1.0, range=(0.0, 1000.0))
    grad_clip: float = param(1.0, range=(0.0, 1e6))      # 0 = none
    precision: str = param("32-true", choices=PRECISIONS)
    seed: int = param(0, range=(0, 2**32 - 1))
    # Machine settings, not the recipe: params.yaml may leave them out.
    accelerator: str = param("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"), optional=True)
    threads: int = param(0, range=(0, 1024), optional=True)  # torch's intra-op threads; 0 = leave as it is

    def __post_init__(self):
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (both directions of a pair per batch), got {self.batch_size}")
        if self.method == "lora" and not self.lora_targets:
            raise ValueError("lora_targets must name at least one linear layer when method is lora")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], where: str = "logic_llm.finetune.train",
                     complete: bool = False) -> "FinetuneConfig":
        """Checked by the params schema; ``complete`` requires every recipe key (params.yaml)."""
        return load(cls, dict(params), where, complete=complete)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune_pairs(data: FinetuneData, exclude: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) flip pairs. No compact prompt of either is in ``exclude`` (the evaluation
    pairs'), and no training prompt is a validation one."""
    taken = set(exclude)
    val = []
    for operator in data.operators:
        frame = generate_flip_pairs(data.val_seed, data.val_pairs, data.depth, data.shots, exclude=taken,
                                    operator=operator)
        taken |= set(frame["prompt_logop"]) | set(frame["prompt_linear"])
        val.append(frame)
    train = [generate_flip_pairs(data.seed, data.train_pairs, data.depth, data.shots, exclude=taken, operator=op)
             for op in data.operators]
    return pd.concat(train, ignore_index=True), pd.concat(val, ignore_index=True)


def compact_prompts(*frames: pd.DataFrame) -> set[str]:
    """Every compact prompt of some flip-pair frames (what ``exclude`` takes)."""
    return {p for frame in frames for column in ("prompt_logop", "prompt_linear") for p in frame[column]}


# ---------------------------------------------------------------- LoRA

class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B A x`` with the base frozen; B starts at zero, so the
    wrapped layer starts as the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update added to its weight."""
        self.base.weight += (self.lora_b @ self.lora_a).to(self.base.weight.dtype) * self.scale
        return self.base


def add_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float, seed: int = 0) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose own name is in ``targets``; the
    wrapped layers' names."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in set(targets)]
    if not found:
        raise ValueError(f"lora_targets {list(targets)} name no linear layer of {type(model).__name__}")
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                LoRALinear(module, rank, alpha, generator))
    return [name for name, _ in found]


def merge_lora(model: nn.Module) -> int:
    """Replace every ``LoRALinear`` by its merged base layer, in place; how many there were."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.merged())
    return len(wrapped)


def prepare_model(model: nn.Module, config: FinetuneConfig) -> int:
    """Make the weights ``config.method`` trains trainable, the others frozen; how many train."""
    if config.method == "lora":
        add_lora(model, config.lora_targets, config.lora_rank, config.lora_alpha, config.seed)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        if not config.train_embeddings:  # tied models freeze their output layer with it
            model.get_input_embeddings().weight.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- data

@dataclass
class Sequences:
    """Prompt + proof token sequences and the pair each belongs to."""
    ids: list[Tensor]             # prompt then answer, [len] each
    prompt_lengths: list[int]
    pair_id: list[str]
    direction: list[str]

    @classmethod
    def from_examples(cls, examples: PairExamples) -> "Sequences":
        return cls([torch.cat([p, a]) for p, a in zip(examples.ids, examples.answer_ids)],
                   [len(p) for p in examples.ids], list(examples.pair_id), list(examples.group))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.ids[i], self.prompt_lengths[i]


def collate(items: Sequence[tuple[Tensor, int]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, and ``labels``: the token where it is an
    answer token, ``IGNORE`` on the prompt and the padding; ``prompt_lengths``."""
    length = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(items):
        input_ids[row, :len(ids)] = ids
        mask[row, :len(ids)] = 1
        labels[row, prompt_length:len(ids)] = ids[prompt_length:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "prompt_lengths": torch.tensor([p for _, p in items], dtype=torch.long)}


class PairBatches(torch.utils.data.Sampler):
    """``n_batches`` batches of ``batch_size`` sequences, whole pairs at a time (both query
    directions together), pairs reshuffled every pass over the data."""

    def __init__(self, pair_id: Sequence[str], batch_size: int, n_batches: int, seed: int):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pair_id):
            groups.setdefault(p, []).append(i)
        self.groups, self.batch_size, self.n_batches, self.seed = list(groups.values()), batch_size, n_batches, seed

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator, batch, made, epoch = torch.Generator(), [], 0, 0
        while made < self.n_batches:
            generator.manual_seed(self.seed * 100_003 + epoch)
            epoch += 1
            for g in torch.randperm(len(self.groups), generator=generator).tolist():
                batch += self.groups[g]
                if len(batch) >= self.batch_size:
                    yield batch[:self.batch_size]
                    made, batch = made + 1, batch[self.batch_size:]
                    if made == self.n_batches:
                        return


def pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


# ---------------------------------------------------------------- loss and scores

def answer_logits(model, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at the positions that predict an answer token, and their targets:
    ``(logits [b, m, vocab], targets [b, m] with IGNORE, first [b, m] bool: the first answer
    token)``. Only those ``m`` positions go through the output layer."""
    target = batch["labels"][:, 1:]
    keep = (target != IGNORE).any(0).nonzero().flatten()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                   use_cache=False).logits
    target = target[:, keep]
    first = torch.zeros_like(target, dtype=torch.bool)
    rows = torch.arange(len(target), device=target.device)
    first[rows, torch.searchsorted(keep, batch["prompt_lengths"] - 1)] = True
    return logits, target, first


def answer_loss(logits: Tensor, target: Tensor, first: Tensor, first_token_weight: float = 1.0) -> Tensor:
    """Mean cross-entropy over the answer tokens, the first one of each weighted ``first_token_weight``."""
    valid = target != IGNORE
    ce = F.cross_entropy(logits[valid].float(), target[valid], reduction="none")
    weight = torch.where(first[valid], first_token_weight, 1.0).to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1e-12)


def answer_scores(logits: Tensor, target: Tensor, first: Tensor, suppress: Sequence[int] = ()
                  ) -> tuple[Tensor, Tensor]:
    """Per row: (first answer token is the argmax, every answer token is) given the gold prefix;
    ``suppress``: token ids greedy decoding never picks."""
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(list(suppress), device=logits.device), float("-inf"))
    right = logits.argmax(-1) == target
    valid = target != IGNORE
    return right[first], (right | ~valid).all(-1)


# ---------------------------------------------------------------- Lightning

class FinetuneModule(pl.LightningModule):
    """Trains ``model``'s trainable weights on the answer-token loss."""

    def __init__(self, model: nn.Module, config: FinetuneConfig, suppress: Sequence[int] = ()):
        super().__init__()
        self.model, self.config, self.suppress = model, config, list(suppress)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        logits, target, first = answer_logits(self.model, batch)
        loss = answer_loss(logits, target, first, self.config.first_token_weight)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        logits, target, first = answer_logits(self.model, batch)
        first_ok, proof_ok = answer_scores(logits, target, first, self.suppress)
        n = len(target)
        self.log("val_loss", answer_loss(logits, target, first), batch_size=n)
        self.log("val_first_token", first_ok.float().mean(), batch_size=n)
        self.log("val_proof", proof_ok.float().mean(), batch_size=n)

    def configure_optimizers(self):
        c = self.config
        trainable = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.dim() >= 2]
        no_decay = [p for p in trainable if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)

        def factor(step: int) -> float:
            if step < c.warmup_steps:
                return (step + 1) / c.warmup_steps
            done = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class Curve(Callback):
    """The validation curve (step, wall and CPU seconds since the fit started, scores, the last
    training loss), also logged as ``curve.*`` metrics at the optimizer step. Keeps a copy of the
    trainable weights of the best validation (first-token accuracy, then proof exact match, then
    lower loss) for :meth:`restore_best`; stops at ``target`` first-token accuracy."""

    def __init__(self, target: float, progress: Callable[[str], None] = lambda message: None):
        self.target, self.start, self.cpu_start = target, time.perf_counter(), time.process_time()
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.reached_target = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics, fitting = trainer.callback_metrics, trainer.state.fn == "fit"
        loss = metrics.get("train_loss")
        point = {"step": int(trainer.global_step),
                 "elapsed_s": time.perf_counter() - self.start if fitting else 0.0,
                 "cpu_s": time.process_time() - self.cpu_start if fitting else 0.0,
                 **{k: float(metrics[k]) for k in ("val_first_token", "val_proof", "val_loss")},
                 "train_loss": float(loss) if loss is not None and trainer.global_step else float("nan")}
        self.history.append(point)
        if fitting:
            self.progress(f"step {point['step']}: val first token {point['val_first_token']:.3f}, proof "
                          f"{point['val_proof']:.3f}, train loss {point['train_loss']:.4f} ({point['elapsed_s']:.0f} s)")
        for logger in trainer.loggers:  # at the optimizer step itself, with the wall time
            logger.log_metrics({f"curve.{k}": v for k, v in point.items()
                                if k != "step" and v == v and (fitting or not k.endswith("_s"))}, step=point["step"])
        key = lambda p: (p["val_first_token"], p["val_proof"], -p["val_loss"])  # noqa: E731
        if self.best is None or key(point) > key(self.best):
            self.best = point
            self.best_state = {name: p.detach().clone() for name, p in pl_module.named_parameters()
                               if p.requires_grad}
        if fitting and point["val_first_token"] >= self.target:
            self.reached_target = True
            trainer.should_stop = True

    def restore_best(self, pl_module) -> None:
        if self.best_state is not None:
            params = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value)


# ---------------------------------------------------------------- the whole run

def load_causal_lm(model_dir: str | os.PathLike, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)`` from an HF directory, float32 (plain transformers: fine-tuning needs
    no engine adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modules.engine import ModelLoadError

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no model at {path}: config.json is missing")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
    return model, AutoTokenizer.from_pretrained(path)


def save_finetuned(model: nn.Module, tokenizer, out_dir: str | os.PathLike, summary: Mapping[str, Any],
                   source_dir: str | os.PathLike | None = None) -> Path:
    """``model`` (LoRA merged) as an HF directory with safetensors weights, its tokenizer,
    the source directory's licence files and ``finetune.json``; atomically."""
    merge_lora(model)
    with atomic_dir(out_dir) as tmp:
        save_model_dir(model, tokenizer, tmp)
        if source_dir is not None:
            for pattern in LICENCE_FILES:
                for path in Path(source_dir).glob(pattern):
                    if path.is_file():
                        shutil.copy2(path, tmp / path.name)
        write_json(dict(summary), tmp / "finetune.json")
        umask = os.umask(0)
        os.umask(umask)
        for path in tmp.iterdir():  # some writers create private files; outputs are shared
            path.chmod(0o666 & ~umask)
    return Path(out_dir)


def _loader(sequences: Sequences, batch_sampler, pad: int):
    return torch.utils.data.DataLoader(sequences, batch_sampler=batch_sampler,
                                       collate_fn=lambda items: collate(items, pad))


def _ordered_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def finetune(model_dir: str | os.PathLike, train_pairs: pd.DataFrame, val_pairs: pd.DataFrame,
             config: FinetuneConfig, out_dir: str | os.PathLike, *, track: str | None = None,
             params: Mapping[str, Any] | None = None, loggers: Sequence = (),
             progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Fine-tune the HF model in ``model_dir`` on ``train_pairs`` (both query directions of
    each flip pair), validate on ``val_pairs``, save the best validation's model to ``out_dir``
    and return the summary (also in ``out_dir/finetune.json``).

    ``track``: an MLflow run of that name in the study's experiment (``tracked_run``) gets the
    settings (and ``params``), the curves (Lightning's MLflow logger) and the summary.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if track is not None:
        from modules.core.tracking import lightning_logger, log_json, tracked_run

        run_params = {"model": str(model_dir), **config.as_dict(), **(params or {})}
        with tracked_run(STUDY, track, run_params) as run:
            logger = lightning_logger(run)
            # Lightning ends the logger's run after each validate/fit call; tracked_run ends it here,
            # so that it reads RUNNING while it runs and a killed run can be told from a finished one.
            logger.finalize = lambda status="success": None
            summary = finetune(model_dir, train_pairs, val_pairs, config, out_dir, loggers=[*loggers, logger],
                               progress=progress)
            log_json(summary, "finetune.json")
            return {**summary, "mlflow_run_id": run.info.run_id}

    pl.seed_everything(config.seed, workers=True, verbose=False)
    model, tokenizer = load_causal_lm(model_dir)
    train_examples, val_examples = build_examples(train_pairs, tokenizer), build_examples(val_pairs, tokenizer)
    train, val = Sequences.from_examples(train_examples), Sequences.from_examples(val_examples)
    total = sum(p.numel() for p in model.parameters())
    trainable = prepare_model(model, config)
    progress(f"{len(train)} training and {len(val)} validation prompts; {trainable:,} of {total:,} weights train "
             f"({config.method})")
    module = FinetuneModule(model, config, suppressed_tokens(model))
    pad = pad_id(tokenizer)
    train_loader = _loader(train, PairBatches(train.pair_id, config.batch_size, config.max_steps, config.seed), pad)
    val_loader = _loader(val, _ordered_batches(len(val), config.val_batch_size), pad)
    curve = Curve(config.target_accuracy, progress)
    stopper = EarlyStopping(monitor="val_first_token", mode="max", patience=config.patience,
                            check_on_train_epoch_end=False)
    with quiet_lightning():
        trainer = pl.Trainer(accelerator=config.accelerator, devices=1, precision=config.precision,
                             max_steps=config.max_steps, max_time=timedelta(minutes=config.max_minutes),
                             val_check_interval=min(config.val_every, config.max_steps), check_val_every_n_epoch=None,
                             gradient_clip_val=config.grad_clip or None, logger=list(loggers) or False,
                             callbacks=[curve, stopper], enable_checkpointing=False, num_sanity_val_steps=0,
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                             use_distributed_sampler=False)
        trainer.validate(module, val_loader, verbose=False)  # the base model's scores, at step 0
        progress(f"step 0: val first token {curve.history[-1]['val_first_token']:.3f}")
        module.train()  # from_pretrained and validate leave it in eval mode, which fit keeps
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(module, train_loader, val_loader)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if curve.history[-1]["step"] != trainer.global_step:  # stopped between validations: score the end too
            trainer.validate(module, val_loader, verbose=False)
            curve.history[-1] |= {"elapsed_s": wall, "cpu_s": cpu}
    curve.restore_best(module)
    if curve.reached_target:
        stopped_by = "target"
    elif stopper.wait_count >= config.patience:
        stopped_by = "patience"
    elif trainer.global_step >= config.max_steps:
        stopped_by = "max_steps"
    else:
        stopped_by = "max_time"
    summary = {"model_dir": str(model_dir), "method": config.method, "trainable_params": trainable,
               "total_params": total, "n_train": len(train), "n_val": len(val),
               "dropped": {"train": train_examples.dropped, "val": val_examples.dropped},
               "steps": int(trainer.global_step), "wall_s": wall, "cpu_s": cpu,
               "seconds_per_step": wall / max(1, trainer.global_step), "stopped_by": stopped_by,
               "best": curve.best, "history": curve.history, "config": config.as_dict()}
    model.eval()
    save_finetuned(model, tokenizer, out_dir, summary, model_dir)
    progress(f"{trainer.global_step} steps in {wall:.0f} s ({stopped_by}); best val first token "
             f"{curve.best['val_first_token']:.3f} at step {curve.best['step']}; saved to {out_dir}")
    return summary
