"""The small logic model: a standard HF GPT-2 (3 layers, 3 heads by default).

It is saved with ``save_pretrained`` next to its tokenizer, so ``AutoModelForCausalLM`` and
``AutoTokenizer`` load the checkpoint like any hub model and the interpretability engine runs
on it unchanged.
"""
from __future__ import annotations

from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel

from modules.core.checksums import verify_checksums
from modules.studies.logic.tokenizer import build_logic_tokenizer


# The MLP activations a logic model may use (transformers' names). "gelu" (exact, erf) is the default:
# a training step on 2 CPU cores is 18% faster than with GPT-2's own "gelu_new", whose tanh formula
# runs as eight elementwise kernels; "gelu_pytorch_tanh" is that same function fused into one.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")


def build_logic_model(n_layer: int = 3, n_head: int = 3, n_embd: int = 96, n_positions: int = 128,
                      dropout: float = 0.0, seed: int = 0, activation: str = "gelu") -> GPT2LMHeadModel:
    import torch

    for key, value, low in (("n_layer", n_layer, 1), ("n_head", n_head, 1), ("n_embd", n_embd, 1),
                            ("n_positions", n_positions, 8)):
        if int(value) < low:
            raise ValueError(f"model.{key} must be an integer >= {low}, got {value}")
    if n_embd % n_head:
        raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    tokenizer = build_logic_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=4 * n_embd, activation_function=activation, resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=dropout, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def load_checkpoint(path: str | Path):
    """Load (model, tokenizer) from a saved HF directory through the engine's loader, which
    fails with one line naming the path when it is absent or broken."""
    from modules.engine.adapters import ModelLoadError, load_model

    path = Path(path)
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"no tokenizer at {path}: tokenizer.json is missing")
    try:
        verify_checksums(path)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    return load_model(path, attn_implementation="sdpa")
