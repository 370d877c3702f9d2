"""LightningModule that trains the small logic model on answer tokens only.

Validation measures greedy-decoding exact match of the whole proof (through <eos>).
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from modules.models.decoding import exact_match, greedy_decode_mixed
from modules.models.logic_model import build_logic_model
from modules.training.sequences import EncodedSequences, answer_loss_mask


class LogicLM(pl.LightningModule):
    def __init__(self, n_layer: int = 3, n_head: int = 3, n_embd: int = 96, n_positions: int = 128,
                 dropout: float = 0.0, lr: float = 3e-3, weight_decay: float = 0.01,
                 warmup_frac: float = 0.1, beta2: float = 0.98, max_steps: int = 1000,
                 max_new_tokens: int = 16, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_logic_model(n_layer, n_head, n_embd, n_positions, dropout, seed)
        self.eos_id = self.model.config.eos_token_id

    def training_step(self, batch: EncodedSequences, batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch.input_ids).logits[:, :-1]
        mask = answer_loss_mask(batch)
        loss = F.cross_entropy(logits[mask], batch.input_ids[:, 1:][mask])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EncodedSequences, batch_idx: int) -> None:
        correct = self.exact_matches(batch)
        self.log("val_exact_match", correct.float().mean(), batch_size=len(batch), sync_dist=True)

    def exact_matches(self, batch: EncodedSequences) -> torch.Tensor:
        generated = greedy_decode_mixed(self.model, batch.input_ids, batch.prompt_lengths,
                                        self.hparams.max_new_tokens, self.eos_id)
        return exact_match(generated, batch.input_ids, batch.prompt_lengths, batch.lengths)

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
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=max(hp.max_steps, 2), pct_start=hp.warmup_frac,
            anneal_strategy="cos", cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
