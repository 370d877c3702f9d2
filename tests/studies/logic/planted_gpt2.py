"""A small GPT-2 on the compact logic vocabulary with one planted head that copies the query.

Head (PLANTED_LAYER, PLANTED_HEAD) attends from the last position to the query variable (second
to last, found through a position-embedding marker) and writes that token's embedding into the
residual stream, which the tied unembedding reads out. Token embeddings live in that head's
32 dimensions, so its values carry them whole. Every other head and MLP keeps small random
weights: only the planted head depends on the query.
"""
from __future__ import annotations

import torch

from modules.studies.logic.model import build_logic_model
from modules.studies.logic.tokenizer import build_logic_tokenizer

PLANTED_LAYER, PLANTED_HEAD = 1, 1
MARKER = 0  # residual dimension that flags the query position


def planted_gpt2(prompt_length: int, seed: int = 0, strength: float = 30.0):
    """(model, tokenizer) for compact prompts of ``prompt_length`` tokens."""
    tokenizer = build_logic_tokenizer()
    model = build_logic_model(n_layer=2, n_head=3, n_embd=96, n_positions=64, seed=seed)
    d, head_dim = 96, 32
    token_dims = slice(PLANTED_HEAD * head_dim, (PLANTED_HEAD + 1) * head_dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
        wte.zero_()
        wte[:, token_dims] = torch.randn(wte.shape[0], head_dim, generator=generator)
        wte[:, MARKER] = 0.0
        wpe.zero_()
        wpe[prompt_length - 2, MARKER] = 6.0  # the query variable's position
        block = model.transformer.h[PLANTED_LAYER].attn
        weight, bias = block.c_attn.weight, block.c_attn.bias  # Conv1D: [d, 3d], columns q | k | v
        q_cols = slice(PLANTED_HEAD * head_dim, (PLANTED_HEAD + 1) * head_dim)
        k_cols = slice(d + PLANTED_HEAD * head_dim, d + (PLANTED_HEAD + 1) * head_dim)
        v_cols = slice(2 * d + PLANTED_HEAD * head_dim, 2 * d + (PLANTED_HEAD + 1) * head_dim)
        weight[:, q_cols] = 0.0
        bias[q_cols] = 0.0
        bias[q_cols.start] = strength          # a constant query ...
        weight[:, k_cols] = 0.0
        bias[k_cols] = 0.0
        weight[MARKER, k_cols.start] = strength  # ... meets the marked position's key
        weight[:, v_cols] = 0.0
        bias[v_cols] = 0.0
        weight[token_dims, v_cols] = torch.eye(head_dim)
        proj = block.c_proj.weight  # [d (head outputs), d]
        proj[q_cols] = 0.0
        proj[q_cols, token_dims] = 8.0 * torch.eye(head_dim)
    return model.eval(), tokenizer
