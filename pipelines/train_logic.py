"""Stage: train the 3-layer logic model for one seed; resumable from its checkpoints."""
from pathlib import Path

import mlflow
import pandas as pd

from modules.data.logic import read_split, read_training_rows, training_files
from modules.io import atomic_write_text, write_json
from modules.tracking.mlflow_tracking import lightning_logger, tracked_run
from modules.training.plots import curve_figure
from modules.training.train import TrainConfig, export_model, train_logic_model
from pipelines._stage import LOGIC_STUDY, params, run, seed_stage_args


def main() -> None:
    args = seed_stage_args(__doc__)
    config = TrainConfig.from_params(params("logic", "train"))
    data, out = Path(args.data), Path(args.out)
    val_path = data / "val.parquet"
    with tracked_run(LOGIC_STUDY, f"train-seed{args.seed}", {**config.as_dict(), "seed": args.seed},
                     data_paths=[*training_files(data), val_path]) as active:
        result = train_logic_model(read_training_rows(data), read_split(val_path), config, args.seed,
                                   ckpt_dir=out / "checkpoints" / f"seed{args.seed}",
                                   loggers=[lightning_logger(active)])
        summary = {"seed": args.seed, "steps": result.steps, "wall_s": result.wall_s,
                   "val_exact_match": result.val_exact_match,
                   "time_to_perfect_val_s": result.time_to_perfect_val_s,
                   "step_to_perfect_val": result.step_to_perfect_val}
        curve = pd.DataFrame(result.history)
        export_model(result.module, out / "models" / f"seed{args.seed}")
        write_json(summary, out / "train" / f"seed{args.seed}.json")
        atomic_write_text(out / "train" / f"seed{args.seed}_curve.csv", curve.to_csv(index=False))
        # at the last step, so that the UI's curves end with the summary instead of starting with it
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if v is not None and k != "seed"},
                           step=result.steps)
        mlflow.log_figure(curve_figure(curve, f"seed {args.seed}"), "training_curve.png")
        mlflow.log_artifact(str(out / "train" / f"seed{args.seed}_curve.csv"))
    print(f"seed {args.seed}: val exact match {result.val_exact_match:.4f} after {result.steps} steps "
          f"({result.wall_s:.0f} s); model at {out / 'models' / f'seed{args.seed}'}")


if __name__ == "__main__":
    run(main)
