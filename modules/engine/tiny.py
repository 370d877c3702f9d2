"""Small randomly initialised decoder models and a word-level tokenizer, built offline.

Used by the engine's tests and benchmark: no weights are downloaded, every model comes from a
config and a seed, and the tokenizer is a plain ``WordLevel`` vocabulary ``w0 .. w{n-1}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig,
                          MistralConfig, PreTrainedTokenizerFast, Qwen2Config)

ARCHS = ("gpt2", "llama", "mistral", "qwen2", "gemma2", "gemma3")


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Whitespace tokenizer over ``w0 .. w{vocab_size-2}`` plus ``<eos>`` (the last id, also pad)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return vocabulary_tokenizer([f"w{i}" for i in range(vocab_size - 1)])


def vocabulary_tokenizer(words: Sequence[str], split_punctuation: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``words`` (ids in that order) plus ``<eos>`` (the last id; also
    bos, pad and unknown). ``split_punctuation`` makes every punctuation mark its own token, so
    natural-language prompts tokenize without a pretrained vocabulary."""
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    core.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
                          if split_punctuation else pre_tokenizers.WhitespaceSplit())
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<eos>",
                                   pad_token="<eos>", unk_token="<eos>")


def tiny_config(arch: str, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                n_kv_heads: int | None = 2, vocab_size: int = 64, max_positions: int = 128,
                sliding_window: int | None = None, attn_implementation: str = "eager", init_std: float = 0.02):
    """A transformers config of the given architecture; GQA where the architecture has it.

    ``init_std`` is the weights' initial standard deviation: tests raise it so that patches
    move the logits well above float noise.
    """
    kv = n_kv_heads or n_heads
    eos = vocab_size - 1
    common = dict(vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                  initializer_range=init_std)
    if arch == "gpt2":
        config = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=max_positions,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif arch in ("llama", "mistral", "qwen2"):
        cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
        extra = {}
        if arch == "mistral":
            extra["sliding_window"] = sliding_window
        if arch == "qwen2" and sliding_window is not None:
            extra.update(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=0)
        config = cls(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                     num_key_value_heads=kv, intermediate_size=2 * d_model,
                     max_position_embeddings=max_positions, tie_word_embeddings=False, **extra, **common)
    elif arch == "gemma2":
        config = Gemma2Config(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                              num_key_value_heads=kv, head_dim=d_model // n_heads,
                              query_pre_attn_scalar=d_model // n_heads,
                              intermediate_size=2 * d_model, max_position_embeddings=max_positions,
                              sliding_window=sliding_window or max_positions, **common)
    elif arch == "gemma3":  # sliding and global layers alternate, each with its own rotary base
        config = Gemma3TextConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                                  num_key_value_heads=kv, head_dim=d_model // n_heads,
                                  query_pre_attn_scalar=d_model // n_heads, intermediate_size=2 * d_model,
                                  max_position_embeddings=max_positions,
                                  sliding_window=sliding_window or max_positions,
                                  layer_types=["full_attention" if i % 2 else "sliding_attention"
                                               for i in range(n_layers)], **common)
    else:
        raise ValueError(f"unknown architecture {arch!r}; tiny models exist for {', '.join(ARCHS)}")
    config._attn_implementation = attn_implementation
    return config


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """A randomly initialised model in eval mode, deterministic in ``seed``."""
    config = tiny_config(arch, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)
    return model.to(dtype).eval()
