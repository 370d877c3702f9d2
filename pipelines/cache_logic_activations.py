"""Stage: cache one seed's residual-stream activations on test problems, for probes and later
analyses (safetensors shards + metadata; a DVC output that later stages reuse)."""
from pathlib import Path

import mlflow
import torch

from modules.data.logic import read_split
from modules.engine import capture_positions
from modules.engine.activation_cache import save_activations
from modules.models.logic_model import load_checkpoint
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from modules.training.sequences import encode
from pipelines._stage import LOGIC_STUDY, params, run, seed_stage_args


def main() -> None:
    args = seed_stage_args(__doc__)
    config = params("logic", "activations")
    model_dir = Path(args.out) / "models" / f"seed{args.seed}"
    test_path = Path(args.data) / "test.parquet"
    with tracked_run(LOGIC_STUDY, f"cache-activations-seed{args.seed}", {**config, "seed": args.seed},
                     data_paths=[test_path]):
        model, tokenizer = load_checkpoint(model_dir)
        frame = read_split(test_path).head(config["n_examples"])
        prompts = encode(tokenizer, frame["prompt"].tolist(), [""] * len(frame))
        if int(prompts.prompt_lengths.min()) != int(prompts.prompt_lengths.max()):
            raise ValueError("cache_logic_activations: test prompts differ in length (mixed depths)")
        ids = prompts.input_ids[:, : int(prompts.prompt_lengths[0])]
        sites = [f"{kind}.{layer}" for kind in config["sites"] for layer in range(model.config.n_layer)]
        positions = list(config["positions"])
        tensors = capture_positions(model, ids, sites, positions, config["batch_size"])
        tensors["example_index"] = torch.arange(len(frame))
        out = Path(args.out) / "activations" / f"seed{args.seed}"
        save_activations(out, tensors, model=str(model_dir), tokenizer=str(model_dir),
                         dataset_hash=data_hash([test_path]), examples_per_shard=config["examples_per_shard"],
                         extra={"positions": positions, "ids": frame["id"].tolist(), "split": "test"},
                         overwrite=True)
        mlflow.log_metrics({"examples": float(len(frame)), "sites": float(len(sites))})
    print(f"cached {len(sites)} sites x {len(positions)} positions for {len(frame)} test problems at {out}")


if __name__ == "__main__":
    run(main)
