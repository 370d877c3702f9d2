"""A tiny random Mistral with one planted head, and a word-level tokenizer for the NL prompts.

The planted head (layer 0) attends from the last position to the query variable, a fixed
number of tokens back, through rotary positions alone, and writes that variable's identity
straight into the logits. It is the only component whose output depends on the query, so
head patching must single it out, through its values and not its queries or keys.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from modules.engine.tiny import tiny_model, vocabulary_tokenizer

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
WORDS = ["Rules", "Facts", "Question", "Answer", "state", "the", "truth", "value", "of", "implies", "or", "and",
         "is", "true", "false", "undetermined", ":", ".", ";"]
PLANTED_LAYER, PLANTED_HEAD = 0, 2


def nl_tokenizer() -> PreTrainedTokenizerFast:
    """Letters, the template's words and punctuation, one token each; <eos> is the last id."""
    return vocabulary_tokenizer(LETTERS + WORDS, split_punctuation=True)


def planted_mistral(query_offset: int, seed: int = 0, strength: float = 12.0):
    """Tiny Mistral (2 layers, width 64, 4 heads over 2 key/value heads) whose head
    (PLANTED_LAYER, PLANTED_HEAD) copies the token ``query_offset`` positions before the current one."""
    vocab_size = len(LETTERS) + len(WORDS) + 1
    model = tiny_model("mistral", seed=seed, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                       vocab_size=vocab_size, max_positions=512)
    attn = model.model.layers[PLANTED_LAYER].self_attn
    head_dim = model.config.head_dim if getattr(model.config, "head_dim", None) else 16
    kv_head = PLANTED_HEAD // (model.config.num_attention_heads // model.config.num_key_value_heads)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        # Every token: 1 on a constant direction (queries and keys built on it ignore the token)
        # plus a random direction of fixed norm, so RMSNorm scales every token alike.
        random = torch.randn(embed.shape, generator=generator)[:, 1:]
        embed[:, 1:] = 2.0 * random / random.norm(dim=-1, keepdim=True)
        embed[:, 0] = 1.0
        rms = embed.pow(2).mean(-1).sqrt()[:, None]
        normed_constant = float(1.0 / rms[0])
        # Rotary angles theta_i; score(delta) = strength^2 * sum_i cos((delta - offset) theta_i) peaks at offset.
        base = getattr(model.config, "rope_theta", None) or model.config.rope_parameters["rope_theta"]
        theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        q = torch.cat([torch.full((head_dim // 2,), strength), torch.zeros(head_dim // 2)])
        k = torch.cat([strength * torch.cos(query_offset * theta), strength * torch.sin(query_offset * theta)])
        rows = slice(PLANTED_HEAD * head_dim, (PLANTED_HEAD + 1) * head_dim)
        kv_rows = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
        attn.q_proj.weight[rows] = 0.0
        attn.q_proj.weight[rows, 0] = q / normed_constant
        attn.k_proj.weight[kv_rows] = 0.0
        attn.k_proj.weight[kv_rows, 0] = k / normed_constant
        attn.v_proj.weight[kv_rows] = 0.0
        attn.v_proj.weight[kv_rows, 1:1 + head_dim] = torch.eye(head_dim)
        attn.o_proj.weight[:, rows] = 0.0
        attn.o_proj.weight[1:1 + head_dim, rows] = 4.0 * torch.eye(head_dim)
        head = model.lm_head.weight
        head.zero_()
        head[:len(LETTERS), 1:1 + head_dim] = embed[:len(LETTERS), 1:1 + head_dim] / rms[:len(LETTERS)]
    return model
