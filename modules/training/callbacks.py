"""What a step-budgeted Lightning training shows while it runs and in MLflow afterwards, whatever
the study: a progress line at every validation (readable in a log file, not only on a terminal),
and every curve (loss, learning rate, validation scores) against the number of optimizer steps
taken, the lab's own step count (``step_to_perfect_val``, the curve CSVs)."""
from __future__ import annotations

import time
from typing import Callable

from lightning.pytorch.callbacks import Callback


class StepReport(Callback):
    """A line per validation: ``<label>: step 250/2000, train_loss 0.41, val_exact_match 0.87 (31 s)``.

    Lightning logs a step's metrics at the number of steps taken before it (a 0-based index); a
    logged ``step`` metric replaces that, here with the count after it, so the loss of the 250th
    update, its learning rate and the validation that follows it all sit at step 250.
    ``step_offset`` shifts that count by the steps earlier runs of the same training spent (a
    restarted run's curve continues where the abandoned one stopped)."""

    def __init__(self, label: str, print_fn: Callable[[str], None] = lambda line: print(line, flush=True),
                 step_offset: int = 0):
        self.label, self.print_fn, self.step_offset = label, print_fn, step_offset
        self.start = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this update will use
        pl_module.log("lr", float(lr), on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("step", float(self.step_offset + trainer.global_step), on_step=True, on_epoch=False,
                      batch_size=1)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            pl_module.log("step", float(self.step_offset + trainer.global_step), batch_size=1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        shown = [name for name in sorted(metrics) if name == "train_loss" or name.startswith("val_")]
        values = ", ".join(f"{name} {float(metrics[name]):.4g}" for name in shown)
        self.print_fn(f"{self.label}: step {trainer.global_step}/{trainer.max_steps}, {values} "
                      f"({time.perf_counter() - self.start:.0f} s)")
