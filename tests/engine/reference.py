"""An independent forward pass for the tiny test models, written from their weights in plain torch.

It calls no module's forward and none of the engine: every engine operation is checked against
it. ``edits[(kind, layer)] = fn(act) -> act`` rewrites an activation in the engine's canonical
layout; ``blocked[layer] = bool [seq, seq] (or [heads, seq, seq])`` knocks attention edges out.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _edit(edits, kind, layer, act):
    fn = (edits or {}).get((kind, layer))
    return act if fn is None else fn(act)


def _layer_norm(x, module):
    return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, module.eps)


def _rms_norm(x, module, offset=0.0):
    eps = getattr(module, "variance_epsilon", None) or module.eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (module.weight + offset)


def _rope(x, positions, theta):
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions[:, None].double() * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos().to(x.dtype), torch.cat([angles, angles], -1).sin().to(x.dtype)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + rotated * sin[:, None]  # x: [batch, seq, heads, dim]


def _attention(q, k, v, scale, layer, edits, blocked, window, softcap=None):
    """q [b, s, h, d], k/v [b, s, kv, d] -> head outputs [b, s, h, d]."""
    seq, heads = q.shape[1], q.shape[2]
    repeat = heads // k.shape[2]
    k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    pos = torch.arange(seq)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed = allowed & (pos[None, :] > pos[:, None] - window)
    allowed = allowed.expand(heads, seq, seq)
    if blocked is not None and layer in blocked:
        allowed = allowed & ~blocked[layer].expand(heads, seq, seq)
    scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = _edit(edits, "pattern", layer, scores.softmax(-1))
    return _edit(edits, "head_out", layer, torch.einsum("bhqk,bkhd->bqhd", pattern, v))


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def reference_logits(model, input_ids, edits=None, blocked=None):
    """Logits [batch, seq, vocab] of ``model`` (tiny GPT-2, Llama, Mistral or Qwen2) on input_ids."""
    config, arch = model.config, model.config.model_type
    batch, seq = input_ids.shape
    positions = torch.arange(seq)
    with torch.no_grad():
        if arch == "gpt2":
            t = model.transformer
            h = t.wte.weight[input_ids] + t.wpe.weight[positions][None]
            heads, dim = config.n_head, config.n_embd // config.n_head
            for layer, block in enumerate(t.h):
                h = _edit(edits, "resid_pre", layer, h)
                a = _layer_norm(h, block.ln_1)
                qkv = a @ block.attn.c_attn.weight + block.attn.c_attn.bias
                q, k, v = (_edit(edits, kind, layer, part.reshape(batch, seq, heads, dim))
                           for kind, part in zip("qkv", qkv.split(config.n_embd, dim=-1)))
                z = _attention(q, k, v, dim ** -0.5, layer, edits, blocked, None)
                attn = z.reshape(batch, seq, -1) @ block.attn.c_proj.weight + block.attn.c_proj.bias
                h = h + _edit(edits, "attn_out", layer, attn)
                m = _layer_norm(h, block.ln_2)
                m = _gelu_new(m @ block.mlp.c_fc.weight + block.mlp.c_fc.bias) @ block.mlp.c_proj.weight
                h = h + _edit(edits, "mlp_out", layer, m + block.mlp.c_proj.bias)
                h = _edit(edits, "resid_post", layer, h)
            return _layer_norm(h, t.ln_f) @ model.lm_head.weight.t()
        if arch not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"no reference forward for {arch}")
        base = model.model
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        dim = config.hidden_size // heads
        theta = config.rope_parameters["rope_theta"]
        window = config.sliding_window if arch == "mistral" else None
        h = base.embed_tokens.weight[input_ids]
        for layer, block in enumerate(base.layers):
            h = _edit(edits, "resid_pre", layer, h)
            a = _rms_norm(h, block.input_layernorm)
            att = block.self_attn
            q, k, v = (F.linear(a, proj.weight, proj.bias).reshape(batch, seq, n, dim)
                       for proj, n in ((att.q_proj, heads), (att.k_proj, kv_heads), (att.v_proj, kv_heads)))
            q, k, v = (_edit(edits, kind, layer, x) for kind, x in zip("qkv", (q, k, v)))
            q, k = _rope(q, positions, theta), _rope(k, positions, theta)
            z = _attention(q, k, v, dim ** -0.5, layer, edits, blocked, window)
            h = h + _edit(edits, "attn_out", layer, z.reshape(batch, seq, -1) @ att.o_proj.weight.t())
            m = _rms_norm(h, block.post_attention_layernorm)
            mlp = block.mlp
            m = (F.silu(m @ mlp.gate_proj.weight.t()) * (m @ mlp.up_proj.weight.t())) @ mlp.down_proj.weight.t()
            h = h + _edit(edits, "mlp_out", layer, m)
            h = _edit(edits, "resid_post", layer, h)
        return _rms_norm(h, base.norm) @ model.lm_head.weight.t()


def set_at(index, values):
    """An edit that writes ``values`` at ``index`` of a copy of the activation."""
    def fn(act):
        act = act.clone()
        act[index] = values
        return act
    return fn
