"""Where every site lives in a transformers decoder-only model, and how to load one.

Layer-index convention (0-based, checked against ``output_hidden_states`` in the tests), for a
model with L blocks and HF's ``hidden_states`` tuple of length L + 1:

    resid_pre.l   = input of block l   = hidden_states[l]          l in [0, L)
    resid_post.l  = output of block l  = hidden_states[l + 1]      l in [0, L - 1)
    resid_post.(L-1) is the last block's raw output; hidden_states[L] is that after the final norm.

Sites inside block l: ``attn_out.l`` (what attention adds to the residual), ``mlp_out.l`` (what
the MLP adds), ``head_out.l`` (the input of the attention output projection, split by head:
[batch, pos, n_heads, head_dim]), ``q.l`` / ``k.l`` / ``v.l`` (projection outputs before rotary
embeddings, and before Gemma-3's per-head q/k norms: [batch, pos, heads, head_dim], with
``n_kv_heads`` heads for k and v under GQA) and ``pattern.l`` (attention probabilities
[batch, n_heads, query_pos, key_pos]). Gemma-2/3 ``attn_out`` and ``mlp_out`` are taken after their
post-norms (what is added to the residual).
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class EngineError(ValueError):
    """Bad input to the engine: a layer, head, position or site out of range, an unknown model."""


@dataclass(frozen=True)
class ArchSpec:
    blocks: str                         # ModuleList of decoder blocks, from the CausalLM root
    embed: str                          # token embedding (scaled inside the module where the model does)
    pos_embed: str | None               # learned absolute position embedding added to the residual
    rotary: str | None                  # rotary embedding module, called once per forward
    final_norm: str
    attn: str                           # attention module, relative to a block
    attn_out: str                       # module whose output is added to the residual after attention
    mlp_out: str                        # module whose output is added to the residual after the MLP
    o_proj: str                         # attention output projection (its input is head_out)
    qkv: tuple[tuple[str, int], ...]    # (module, chunk of its output) for q, k, v
    norm_offset: float = 0.0            # RMSNorm weights stored as w - 1 (Gemma)
    heads_are_linear: bool = True       # the sum of per-head outputs is what reaches the residual
    mlp: str = "mlp"                    # the MLP module, relative to a block
    input_norm: str = "input_layernorm"  # the norm before attention, relative to a block
    k_norm: str | None = None           # per-head norm of the keys before rotary embeddings (Gemma-3)


_LLAMA = ArchSpec(blocks="model.layers", embed="model.embed_tokens", pos_embed=None,
                  rotary="model.rotary_emb", final_norm="model.norm", attn="self_attn",
                  attn_out="self_attn", mlp_out="mlp", o_proj="self_attn.o_proj",
                  qkv=(("self_attn.q_proj", 0), ("self_attn.k_proj", 0), ("self_attn.v_proj", 0)))

SPECS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(blocks="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe",
                     rotary=None, final_norm="transformer.ln_f", attn="attn", attn_out="attn",
                     mlp_out="mlp", o_proj="attn.c_proj",
                     qkv=(("attn.c_attn", 0), ("attn.c_attn", 1), ("attn.c_attn", 2)), input_norm="ln_1"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma2": ArchSpec(**{**_LLAMA.__dict__, "attn_out": "post_attention_layernorm",
                          "mlp_out": "post_feedforward_layernorm", "norm_offset": 1.0,
                          "heads_are_linear": False}),
}
# Gemma-3 (text): Gemma-2's sandwich norms and norm offset, plus per-head q/k norms (applied after the
# projections, before rotary embeddings) and rotary embeddings that differ between sliding and global layers.
SPECS["gemma3_text"] = ArchSpec(**{**SPECS["gemma2"].__dict__, "k_norm": "self_attn.k_norm"})
_FIRST_SPECS = ("gemma2", "gpt2", "llama", "mistral", "qwen2")


def supported_architectures() -> str:
    """The supported ``model_type`` values for error messages: the first five alphabetically, later
    additions after them (messages that name the first ones stay stable)."""
    return ", ".join([*_FIRST_SPECS, *sorted(set(SPECS) - set(_FIRST_SPECS))])


def _check_index(name: str, value, size: int, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise EngineError(f"{name} must be an integer, got {value!r}") from None
    if not 0 <= value < size:
        raise EngineError(f"{name} {value} out of range for {what} (allowed 0..{size - 1})")
    return value


class Adapter:
    """Locates the sites of one HF causal LM; every engine function goes through it."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        arch = getattr(config, "model_type", None)
        if arch not in SPECS:
            raise EngineError(f"unknown architecture {arch!r}; supported: {supported_architectures()}")
        self.model, self.config, self.arch, self.spec = model, config, arch, SPECS[arch]
        self.blocks = model.get_submodule(self.spec.blocks)
        self.n_layers = len(self.blocks)
        self.d_model = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        self.final_norm = model.get_submodule(self.spec.final_norm)
        self.unembed = model.get_output_embeddings()
        self._rotary_by_type: bool | None = None

    # --- modules -------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[self.check_layer(layer)]

    def module(self, layer: int, path: str) -> nn.Module:
        return self.block(layer).get_submodule(path)

    def proj(self, layer: int, kind: str) -> tuple[nn.Module, int, int]:
        """(module, chunk index, n_heads) for kind in q/k/v."""
        path, chunk = self.spec.qkv["qkv".index(kind)]
        return self.module(layer, path), chunk, self.n_heads if kind == "q" else self.n_kv_heads

    def n_heads_of(self, kind: str) -> int:
        return self.n_kv_heads if kind in ("k", "v") else self.n_heads

    # --- checks --------------------------------------------------------------------------
    def check_layer(self, layer) -> int:
        return _check_index("layer", layer, self.n_layers, f"a {self.n_layers}-layer model")

    def check_head(self, head, kind: str = "head_out") -> int:
        n = self.n_heads_of(kind)
        what = f"{kind} with {n} {'key/value ' if kind in ('k', 'v') else ''}heads"
        return _check_index("head", head, n, what)

    # --- pieces of the forward pass the restart runner calls itself ------------------------
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.get_submodule(self.spec.embed)(input_ids)
        if self.spec.pos_embed is not None:
            hidden = hidden + self.model.get_submodule(self.spec.pos_embed)(position_ids).to(hidden.device)
        return hidden

    def rotary_kind(self, layer: int) -> str | None:
        """The layer type whose rotary embedding layer ``layer`` uses (Gemma-3: sliding or full
        attention, with different bases), or None where one rotary embedding serves every layer."""
        if self._rotary_by_type is None:
            rotary = self.model.get_submodule(self.spec.rotary) if self.spec.rotary else None
            self._rotary_by_type = bool(rotary is not None and "layer_type" in
                                        inspect.signature(rotary.forward).parameters)
        return self.config.layer_types[layer] if self._rotary_by_type else None

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer: int = 0):
        """(cos, sin) that block ``layer`` receives, as the model's forward computes them."""
        if self.spec.rotary is None:
            return None
        rotary = self.model.get_submodule(self.spec.rotary)
        kind = self.rotary_kind(layer)
        return rotary(hidden, position_ids) if kind is None else rotary(hidden, position_ids, kind)

    def sliding_window(self, layer: int) -> int | None:
        layer_types = getattr(self.config, "layer_types", None)
        window = getattr(self.config, "sliding_window", None)
        if layer_types is not None:
            return window if layer_types[layer] == "sliding_attention" else None
        return window if self.arch == "mistral" else None

    def keys_values(self, layer: int, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [batch, n_kv_heads, pos, head_dim] that block ``layer`` computes from
        its input ``hidden``, as attention stores them (after rotary embeddings)."""
        block = self.block(layer)
        x = block.get_submodule(self.spec.input_norm)(hidden)
        shape = (*x.shape[:-1], self.n_kv_heads, self.head_dim)
        outputs, kv = {}, []
        for kind in "kv":
            module, chunk, _ = self.proj(layer, kind)
            if id(module) not in outputs:  # GPT-2's fused projection runs once
                outputs[id(module)] = module(x)
            width = self.n_kv_heads * self.head_dim
            kv.append(outputs[id(module)][..., chunk * width:(chunk + 1) * width].reshape(shape).transpose(1, 2))
        keys, values = kv
        if self.spec.k_norm is not None:
            keys = block.get_submodule(self.spec.k_norm)(keys)
        if position_embeddings is not None:
            attn = block.get_submodule(self.spec.attn)
            rotate = getattr(inspect.getmodule(type(attn)), "apply_rotary_pos_emb")
            cos, sin = position_embeddings
            keys = rotate(keys, keys, cos, sin)[1]
        return keys, values

    def logits(self, resid_final: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and unembedding of the last block's output (with Gemma's final soft-cap).

        ``tokens`` (ids ``[k]``) computes only those vocabulary columns, ``[..., k]``: a lens that
        reads a few tokens off many vectors need not build full-vocabulary logits each time."""
        hidden = self.final_norm(resid_final.to(self.final_norm.weight.device)).to(self.unembed.weight.device)
        if tokens is None:
            logits = self.unembed(hidden)
        else:
            tokens = torch.as_tensor(tokens, device=hidden.device).long()
            logits = hidden @ self.unembed.weight[tokens].t()
            if self.unembed.bias is not None:
                logits = logits + self.unembed.bias[tokens]
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def linear_norm(self, norm: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``norm`` (LayerNorm or RMSNorm) as a linear map, its scale frozen at ``reference`` (no
        bias), in float32: vectors that add up to ``reference`` then add up to its normalised value."""
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
        x, reference = x.float(), reference.float()
        if isinstance(norm, nn.LayerNorm):
            x = x - x.mean(-1, keepdim=True)
            scale = torch.rsqrt(reference.var(-1, unbiased=False, keepdim=True) + eps)
        else:
            scale = torch.rsqrt(reference.pow(2).mean(-1, keepdim=True) + eps)
        return x * scale * (norm.weight.float() + self.spec.norm_offset)

    def linear_final_norm(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The final norm as a linear map, its scale frozen at ``reference`` (no bias): the
        direct-logit-attribution view, under which components add up to the normalised residual."""
        return self.linear_norm(self.final_norm, x, reference)

    def _project_heads(self, layer: int, head_out: torch.Tensor) -> torch.Tensor:
        """Each head's slice of the output projection applied to its output: [..., n_heads, d_model]."""
        o_proj = self.module(layer, self.spec.o_proj)
        weight = o_proj.weight  # nn.Linear: [d_model, H*dh]; GPT-2 Conv1D: [H*dh, d_model]
        if isinstance(o_proj, nn.Linear):
            weight = weight.t()
        weight = weight.reshape(self.n_heads, self.head_dim, -1)
        return torch.einsum("...hd,hdm->...hm", head_out.to(weight.dtype), weight)

    def head_results(self, layer: int, head_out: torch.Tensor) -> torch.Tensor:
        """Per-head contributions in model space [..., n_heads, d_model], without the bias."""
        if not self.spec.heads_are_linear:
            raise EngineError(f"{self.arch} normalises the attention output after the projection, "
                              "so per-head outputs do not add up in the residual stream")
        return self._project_heads(layer, head_out)

    def head_contributions(self, layer: int, head_out: torch.Tensor) -> torch.Tensor:
        """What each head alone adds to the residual stream, ``[..., n_heads, d_model]`` from
        ``head_out`` ``[..., n_heads, head_dim]``: its projected output plus the output projection's
        bias (so that a model with one head gets exactly the attention output).

        Where the attention output is normalised after the projection (Gemma-2/3), a head's output
        alone is not what reaches the residual. Its contribution is then the post-attention norm
        applied to (head's projected output + bias) with the norm's scale frozen at the whole
        projected attention output: linear in each head, exact for one head, and the heads' parts
        add up to the real attention output less (n_heads - 1) biases (the same linearisation as
        :meth:`linear_final_norm`)."""
        parts = self._project_heads(layer, head_out)
        bias = self.o_proj_bias(layer)
        if bias is not None:
            parts = parts + bias.to(parts.dtype)
        if self.spec.heads_are_linear:
            return parts
        whole = parts.sum(-2) - (self.n_heads - 1) * bias.to(parts.dtype) if bias is not None else parts.sum(-2)
        norm = self.module(layer, self.spec.attn_out)  # the post-attention norm
        return self.linear_norm(norm, parts, whole.unsqueeze(-2)).to(parts.dtype)

    def o_proj_bias(self, layer: int) -> torch.Tensor | None:
        return self.module(layer, self.spec.o_proj).bias


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``, built once and kept on the model."""
    adapter = model.__dict__.get("_engine_adapter")
    if adapter is None:
        adapter = Adapter(model)
        model.__dict__["_engine_adapter"] = adapter
    return adapter


class ModelLoadError(EngineError):
    """The model or its weights cannot be found or read."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model(name_or_path: str | Path, dtype: torch.dtype | str = torch.float32, device: str | None = None,
               device_map: str | dict | None = None, attn_implementation: str = "eager",
               trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` through ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Safetensors weights are preferred (``.bin`` files are read with ``weights_only=True`` by
    transformers); eager attention is the default because attention patterns and knockout are
    exact there. ``device_map="auto"`` spreads a large model over the visible GPUs.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if device is not None and device_map is not None:
        raise EngineError("pass either device or device_map, not both")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise EngineError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16'")
        dtype = getattr(torch, dtype)
    path = Path(name_or_path)
    local = path.exists()
    text = str(name_or_path)
    # "artifacts/no_model" is a path when its first part is a local folder, not a hub id "org/name"
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or (
        "/" in text and Path(text.split("/")[0]).is_dir())
    if looks_local and not local:  # not a hub id ("name" or "org/name"): say so, not a hub error
        raise ModelLoadError(f"no model at {path}: directory not found")
    if local:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no model at {path}: config.json is missing")
        has_safetensors = any(path.glob("*.safetensors"))
        if not has_safetensors and not any(path.glob("pytorch_model*.bin")):
            raise ModelLoadError(f"no weights at {path}: expected *.safetensors or pytorch_model*.bin")
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...: one line
        raise ModelLoadError(f"cannot load config for {name_or_path}: {_first_line(error)}") from None
    if config.model_type not in SPECS:
        raise EngineError(f"unknown architecture {config.model_type!r} in {name_or_path}; "
                          f"supported: {supported_architectures()}")
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if not local or has_safetensors:
        kwargs["use_safetensors"] = True if local else None
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(f"cannot load weights for {name_or_path}: {_first_line(error)}") from None
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer

