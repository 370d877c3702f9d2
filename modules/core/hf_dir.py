"""Saving a model as a standard Hugging Face directory that transformers 4.x and 5.x both load."""
from __future__ import annotations

import json
from pathlib import Path


def context_length(config) -> int | None:
    """The model's real context length (GPT-2's ``n_positions``, the others' ``max_position_embeddings``)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def portable_tokenizer_config(directory: Path, model_max_length: int | None) -> None:
    """tokenizer_config.json that transformers 4.x reads too: the generic fast class (5.x writes
    ``TokenizersBackend`` or an architecture class that rebuilds the pipeline), no 5.x-only keys,
    and the model's context length in place of 5.x's "unlimited" 1e30."""
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    for key in ("backend", "is_local", "local_files_only"):
        config.pop(key, None)
    extra = config.pop("extra_special_tokens", None)  # 5.x writes a list; 4.x wants a dict there
    if isinstance(extra, dict):
        config["extra_special_tokens"] = extra
    elif extra:
        config["additional_special_tokens"] = list(extra)  # read by both
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def save_model_dir(model, tokenizer, directory: str | Path) -> None:
    """safetensors weights, config and a portable tokenizer whose ``model_max_length`` is the
    model's context length."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.model_max_length = context_length(model.config) or tokenizer.model_max_length
    tokenizer.save_pretrained(directory)
    portable_tokenizer_config(directory, context_length(model.config))


def save_checkpoint(model, tokenizer, out_dir: str | Path) -> None:
    """:func:`save_model_dir` written atomically, with its files' checksums."""
    from modules.core.checksums import write_checksums
    from modules.core.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        save_model_dir(model, tokenizer, tmp)
        write_checksums(tmp)
