"""The from-scratch world's model: a small HF Llama trained with Lightning on the knowledge graph's
atomic facts (with their alias and identity facts) and its training two-hop queries. The loss covers
the answer and <eos>; validation measures greedy exact match on the atomic facts, the training
two-hop queries and the held-out ID and OOD two-hop queries, each in one teacher-forced pass.

The saved checkpoint is a standard HF directory (safetensors, config, tokenizer, checksums), so
the engine and the analyses load it as they load the pretrained models. Optuna tunes the learning
rate and weight decay on short runs, in an RDB study (sqlite by default), one nested MLflow run a
trial.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import pandas as pd
import torch

from modules.core.params import load, param
from modules.training.callbacks import StepReport
from modules.training.decoding import teacher_forced_exact_match
from modules.training.sequences import (BatchStream, EncodedSequences, OrderedBatches, answer_loss, collate_single,
                                        encode)

EVAL_SETS = ("atomic", "train_twohop", "test_id", "test_ood")


@dataclass(frozen=True)
class GraphTrainConfig:
    n_layer: int = param(6, range=(1, 64))
    n_head: int = param(4, range=(1, 64))
    d_model: int = param(128, range=(8, 8192))
    lr: float = param(2e-3, range=(1e-6, 1.0))
    weight_decay: float = param(0.1, range=(0.0, 10.0))
    warmup_frac: float = param(0.05, range=(0.0, 0.9))
    batch_size: int = param(128, range=(1, 1 << 16))
    max_steps: int = param(3000, range=(1, 10**8))
    val_every: int = param(500, range=(1, 10**8))
    val_size: int = param(2000, range=(1, 10**7))   # rows of each evaluation set scored during training
    grad_clip: float = param(1.0, range=(0.0, 1e6))
    # Machine settings, not the recipe: params.yaml may leave them out.
    accelerator: str = param("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"), optional=True)
    devices: Any = param(1, optional=True)
    strategy: str = param("auto", optional=True)
    threads: int = param(0, range=(0, 1024), optional=True)

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"train.d_model ({self.d_model}) must be divisible by train.n_head ({self.n_head})")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "hopping.train", complete: bool = False
                    ) -> "GraphTrainConfig":
        return load(cls, dict(params), where, complete=complete)


def build_graph_model(tokenizer, config: GraphTrainConfig, max_positions: int, seed: int):
    """A Llama decoder sized by ``config`` over the graph's word-level vocabulary (tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.d_model, intermediate_size=4 * config.d_model,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_head,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(model_config)
    model.set_attn_implementation("eager")  # plain matmuls beat the fused kernel on short CPU sequences
    return model


def training_pairs(tables: Mapping[str, pd.DataFrame]) -> tuple[list[str], list[str]]:
    """(prompts, answers): every atomic fact (alias and identity facts included) and every training
    two-hop query, in table order."""
    facts, twohop = tables["facts"], tables["twohop"]
    train = twohop[twohop["split"] == "train"]
    return ([*facts["prompt"], *train["prompt"]], [*facts["answer"], *train["e3_name"]])


def evaluation_pairs(tables: Mapping[str, pd.DataFrame], limit: int | None = None) -> dict[str, tuple[list, list]]:
    """The four evaluation sets (EVAL_SETS), each cut to its first ``limit`` rows."""
    facts, twohop = tables["facts"], tables["twohop"]
    sets = {"atomic": (facts["prompt"], facts["answer"])}
    for split, name in (("train", "train_twohop"), ("test_id", "test_id"), ("test_ood", "test_ood")):
        rows = twohop[twohop["split"] == split]
        sets[name] = (rows["prompt"], rows["e3_name"])
    return {name: (list(p[:limit]), list(a[:limit])) for name, (p, a) in sets.items()}


class GraphLM(pl.LightningModule):
    def __init__(self, model, config: GraphTrainConfig, set_names: Sequence[str]):
        super().__init__()
        self.model, self.config, self.set_names = model, config, list(set_names)

    def training_step(self, batch: EncodedSequences, batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch.input_ids, attention_mask=torch.ones_like(batch.input_ids)).logits
        loss = answer_loss(logits[:, :-1], batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EncodedSequences, batch_idx: int, dataloader_idx: int = 0) -> None:
        correct = teacher_forced_exact_match(self.model, batch.input_ids, batch.prompt_lengths, batch.lengths)
        self.log(f"val_{self.set_names[dataloader_idx]}_exact_match", correct.float().mean(), batch_size=len(batch),
                 add_dataloader_idx=False, sync_dist=True)

    def configure_optimizers(self):
        config = self.config
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
        total = max(config.max_steps, 2)
        pct_start = 0.0 if config.warmup_frac * total <= 1 else config.warmup_frac  # OneCycleLR needs >= 2 warmup steps
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                       pct_start=pct_start, anneal_strategy="cos", cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class GraphTrainResult:
    model: Any
    steps: int
    wall_s: float
    scores: dict[str, float]     # the last validation's exact match per evaluation set
    history: list[dict[str, float]]


class _History(pl.Callback):
    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.rows.append({"step": trainer.global_step, **{k: float(v) for k, v in trainer.callback_metrics.items()
                                                           if k.startswith("val_")}})


def train_graph_model(tokenizer, tables: Mapping[str, pd.DataFrame], config: GraphTrainConfig, seed: int,
                      loggers: Sequence = (), callbacks: Sequence[pl.Callback] = (),
                      label: str = "train") -> GraphTrainResult:
    """Fit a fresh model on ``tables`` and return it with its validation history."""
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.accelerator is {config.accelerator!r} but this machine has no visible GPU; "
                         "use 'auto' or 'cpu'")
    torch.set_num_threads(config.threads or max(1, os.cpu_count() or 1))
    pl.seed_everything(seed, workers=True, verbose=False)
    train = encode(tokenizer, *training_pairs(tables))
    evaluation = {name: encode(tokenizer, *pairs) for name, pairs in evaluation_pairs(tables, config.val_size).items()
                  if pairs[0]}
    width = max(train.input_ids.shape[1], *(e.input_ids.shape[1] for e in evaluation.values()))
    model = build_graph_model(tokenizer, config, max_positions=1 << (width - 1).bit_length(), seed=seed)
    module = GraphLM(model, config, list(evaluation))
    history = _History()
    trainer = pl.Trainer(
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy, max_steps=config.max_steps,
        val_check_interval=min(config.val_every, config.max_steps), check_val_every_n_epoch=None,
        gradient_clip_val=config.grad_clip or None, logger=list(loggers) or False, enable_checkpointing=False,
        callbacks=[history, *callbacks, StepReport(label)], num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        log_every_n_steps=min(50, config.val_every))
    world = config.devices if isinstance(config.devices, int) and config.devices > 0 else 1
    train_loader = torch.utils.data.DataLoader(
        BatchStream(train, config.batch_size, seed, n_batches=config.max_steps * world),
        batch_size=None, shuffle=False, collate_fn=collate_single)
    val_loaders = [torch.utils.data.DataLoader(OrderedBatches(data, 1000), batch_size=None, shuffle=False,
                                               collate_fn=collate_single) for data in evaluation.values()]
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loaders)
    wall = time.perf_counter() - start
    last = history.rows[-1] if history.rows else {}
    scores = {name: last.get(f"val_{name}_exact_match", float("nan")) for name in evaluation}
    model.eval()
    return GraphTrainResult(model, trainer.global_step, wall, scores, history.rows)


def tuning_fingerprint(tables: Mapping[str, pd.DataFrame], base: GraphTrainConfig, space: Mapping, trial_max_steps: int,
                       seed: int, objective_set: str) -> str:
    """Short hash of what a trial's score depends on (data, settings, space, trial length, seed,
    objective), so a resumed study never mixes trials whose scores cannot be compared."""
    import hashlib
    import json

    execution = {"accelerator", "devices", "strategy", "threads"}
    settings = {k: v for k, v in asdict(base).items() if k not in execution}
    digest = hashlib.sha256(json.dumps({"train": settings, "space": space, "steps": trial_max_steps, "seed": seed,
                                        "objective": objective_set}, sort_keys=True, default=str).encode())
    for prompts in training_pairs(tables):
        digest.update("\n".join(prompts).encode())
    return digest.hexdigest()[:10]


def tune_graph_model(tokenizer, tables: Mapping[str, pd.DataFrame], base: GraphTrainConfig,
                     space: Mapping[str, Mapping[str, Any]], *, n_trials: int, trial_max_steps: int, storage: str,
                     study_name: str, seed: int, mlflow_study: str, objective_set: str = "atomic"):
    """An Optuna study maximising the last validation's exact match on ``objective_set`` over
    ``trial_max_steps``-step runs; resumed from ``storage`` when it already holds trials."""
    import optuna

    from modules.core.tracking import lightning_logger
    from modules.training.tuning import check_space, open_study, optimize_to_budget, suggest, trial_run

    check_space(space, GraphTrainConfig)
    if n_trials < 1:
        raise ValueError(f"tune.n_trials must be >= 1, got {n_trials}")
    if objective_set not in EVAL_SETS:
        raise ValueError(f"tune.objective must be one of {list(EVAL_SETS)}, got {objective_set!r}")
    fingerprint = tuning_fingerprint(tables, base, space, trial_max_steps, seed, objective_set)
    study = open_study(f"{study_name}-{fingerprint}", storage, seed, f"{objective_set}_exact_match")

    def objective(trial: optuna.Trial) -> float:
        config = replace(base, **suggest(trial, space), max_steps=trial_max_steps,
                         val_every=trial_max_steps)
        GraphTrainConfig.from_params(asdict(config))  # range-check the sampled values
        with trial_run(study, trial, mlflow_study, asdict(config)) as run:
            result = train_graph_model(tokenizer, tables, config, seed, loggers=[lightning_logger(run)],
                                       label=f"trial {trial.number}")
            return result.scores[objective_set]

    return optimize_to_budget(study, objective, n_trials)
