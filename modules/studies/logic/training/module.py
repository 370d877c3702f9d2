"""LightningModule that trains the small logic model on answer tokens (the first one weighted), plus
optional auxiliary losses: next-token on the prompt, and ``source_aux``, a head on the residual stream
after layer ``source_aux_layer`` that names what each rule's conclusion descends from (the batch's
``source_targets``). The head is dropped with the module; the saved model is the plain GPT-2.
Rows that share a prefix (query twins) run it once (``modules/studies/logic/training/shared_prefix.py``).

Validation measures greedy-decoding exact match of the whole proof (through <eos>), computed in
one teacher-forced pass (the same number; see ``teacher_forced_exact_match``).
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from modules.studies.logic.model import build_logic_model
from modules.studies.logic.training.sequences import source_head, source_loss
from modules.studies.logic.training.shared_prefix import shared_prefix_outputs
from modules.training.decoding import right_padded_outputs, teacher_forced_exact_match
from modules.training.sequences import EncodedSequences, answer_loss, training_loss


class LogicLM(pl.LightningModule):
    def __init__(self, n_layer: int = 3, n_head: int = 3, n_embd: int = 96, n_positions: int = 128,
                 dropout: float = 0.0, lr: float = 3e-3, weight_decay: float = 0.01,
                 warmup_frac: float = 0.1, beta2: float = 0.98, max_steps: int = 1000,
                 first_token_weight: float = 1.0, prompt_loss_weight: float = 0.0, seed: int = 0,
                 source_aux: float = 0.0, source_aux_layer: int = 2, activation: str = "gelu",
                 attention: str = "eager"):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_logic_model(n_layer, n_head, n_embd, n_positions, dropout, seed, activation)
        self.model.set_attn_implementation(attention)  # a kernel choice, not saved with the model
        if source_aux:
            self.source_head = source_head(n_embd, self.model.config.vocab_size)

    def training_step(self, batch: EncodedSequences, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if hp.source_aux and batch.source_targets is None:
            raise ValueError("train.source_aux needs source targets in the training batches")
        # The prompt loss reads every prompt position, so it takes the plain pass.
        shared = None if hp.prompt_loss_weight else shared_prefix_outputs(self.model, batch, bool(hp.source_aux))
        if shared is None:
            outputs = right_padded_outputs(self.model, batch.input_ids, hidden_states=bool(hp.source_aux))
            loss = training_loss(outputs.logits[:, :-1], batch, hp.first_token_weight, hp.prompt_loss_weight)
        else:
            loss = answer_loss(shared.logits[:, :-1], shared.suffix, hp.first_token_weight)
        if hp.source_aux:
            rows, cols = (batch.source_targets != -100).nonzero(as_tuple=True)
            hidden = (outputs.hidden_states[hp.source_aux_layer][rows, cols] if shared is None
                      else shared.hidden_at(hp.source_aux_layer, rows, cols))
            aux = source_loss(self.source_head(hidden), batch.source_targets[rows, cols])
            self.log("train_source_loss", aux, batch_size=len(batch))
            loss = loss + hp.source_aux * aux
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EncodedSequences, batch_idx: int) -> None:
        correct = self.exact_matches(batch)
        self.log("val_exact_match", correct.float().mean(), batch_size=len(batch), sync_dist=True)

    def exact_matches(self, batch: EncodedSequences) -> torch.Tensor:
        return teacher_forced_exact_match(self.model, batch.input_ids, batch.prompt_lengths, batch.lengths)

    def on_train_start(self) -> None:
        dataset = self.trainer.train_dataloader.dataset
        if hasattr(dataset, "start"):  # a resumed run continues the batch stream where it stopped
            dataset.start = self.trainer.global_step * self.trainer.world_size

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=(0.9, hp.beta2))
        total = max(hp.max_steps, 2)
        # OneCycleLR divides by zero when the warmup is exactly one step; a one-step warmup is none
        pct_start = 0.0 if hp.warmup_frac * total == 1 else hp.warmup_frac
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=total, pct_start=pct_start,
            anneal_strategy="cos", cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
