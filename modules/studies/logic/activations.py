"""Cached residual-stream activations of a small logic model on test prompts (safetensors shards
and metadata), for the probes and later analyses."""
from __future__ import annotations

from pathlib import Path

import torch

from modules.core.tracking import data_hash
from modules.engine import capture_positions
from modules.engine.activation_cache import save_activations
from modules.studies.logic.data import read_split
from modules.studies.logic.model import load_checkpoint
from modules.training.sequences import encode


def cache_activations(model_dir: Path, test_path: Path, config, out: Path) -> dict[str, int]:
    """Capture ``config.sites`` of every layer at ``config.positions`` (counted from the prompt's
    end when negative) for the first ``config.n_examples`` test prompts; write them at ``out``."""
    model, tokenizer = load_checkpoint(model_dir)
    frame = read_split(test_path).head(config.n_examples)
    if frame.empty:
        raise ValueError(f"activations: the test split at {test_path} has no rows")
    prompts = encode(tokenizer, frame["prompt"].tolist(), [""] * len(frame))
    if int(prompts.prompt_lengths.min()) != int(prompts.prompt_lengths.max()):
        raise ValueError("activations: test prompts differ in length (mixed depths)")
    length = int(prompts.prompt_lengths[0])
    positions = list(config.positions)
    outside = [p for p in positions if not -length <= p < length]
    if outside:
        raise ValueError(f"params.yaml logic.activations.positions {outside} are outside the {length}-token "
                         f"prompts (allowed: {-length} to {length - 1})")
    ids = prompts.input_ids[:, :length]
    sites = [f"{kind}.{layer}" for kind in config.sites for layer in range(model.config.n_layer)]
    tensors = capture_positions(model, ids, sites, positions, config.batch_size)
    tensors["example_index"] = torch.arange(len(frame))
    save_activations(out, tensors, model=str(model_dir), tokenizer=str(model_dir),
                     dataset_hash=data_hash([test_path]), examples_per_shard=config.examples_per_shard,
                     extra={"positions": positions, "ids": frame["id"].tolist(), "split": "test"}, overwrite=True)
    return {"examples": len(frame), "sites": len(sites)}
