"""Run the decoder blocks by hand: restart at any layer, for the query positions from any start.

A recorded pass of the target prompts keeps every block's input (the residual stream) and every
layer's keys and values. A patch at layer l and position p then only recomputes blocks l.. for
positions p..: the positions before p are unchanged (causal attention), so their keys and values
are taken from the record. The blocks themselves are the model's own modules, called with the
masks and rotary embeddings the model would build, so hooks on their submodules still fire.
"""
from __future__ import annotations

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import _first, attention_impl


class PrefixKV:
    """Stands in for a transformers Cache inside attention.

    While ``recording`` it keeps each layer's keys/values; otherwise it puts the first
    ``prefix_len`` recorded positions, for the prompts in ``rows``, then ``computed`` keys/values
    (if any), before the new ones.
    """

    def __init__(self, n_layers: int):
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.recording = True
        self.prefix_len = 0
        self.rows: Tensor | None = None
        self.computed: tuple[Tensor, Tensor] | None = None

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        if self.recording:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
            return key_states, value_states
        keys, values = [], []
        if self.prefix_len:
            recorded_k = self.keys[layer_idx][:, :, :self.prefix_len]
            recorded_v = self.values[layer_idx][:, :, :self.prefix_len]
            if self.rows is not None:
                rows = self.rows.to(recorded_k.device)
                recorded_k, recorded_v = recorded_k.index_select(0, rows), recorded_v.index_select(0, rows)
            keys.append(recorded_k)
            values.append(recorded_v)
        if self.computed is not None:
            keys.append(self.computed[0])
            values.append(self.computed[1])
        if not keys:
            return key_states, value_states
        return torch.cat([*keys, key_states], dim=2), torch.cat([*values, value_states], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_len + (0 if self.computed is None else self.computed[0].shape[2])


def causal_mask(q_start: int, q_len: int, kv_len: int, window: int | None, padding: Tensor | None,
                as_bool: bool, dtype: torch.dtype, device) -> Tensor:
    """[batch or 1, 1, q_len, kv_len]: query q_start + i sees key j iff j <= q_start + i, within the
    sliding window and not padding. Boolean (True attends) for SDPA, additive float otherwise."""
    q = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    k = torch.arange(kv_len, device=device)[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    allowed = allowed[None, None]
    if padding is not None:
        allowed = allowed & padding[:, None, None, :kv_len].to(device=device, dtype=torch.bool)
    if as_bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


class Runner:
    """Blocks of ``model`` over fixed target prompts ``input_ids`` [batch, seq]."""

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor | None = None):
        self.model, self.adapter = model, get_adapter(model)
        if input_ids.ndim != 2:
            raise EngineError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise EngineError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                              f"input_ids shape {tuple(input_ids.shape)}")
        self.input_ids = input_ids
        self.padding = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        self.batch, self.seq = input_ids.shape
        device = self.adapter.blocks[0].parameters().__next__().device
        self.position_ids = torch.arange(self.seq, device=device)[None]
        self.kv = PrefixKV(self.adapter.n_layers)
        self._rotary: dict[tuple, tuple] = {}
        self._masks: dict[tuple, Tensor] = {}

    def _position_embeddings(self, hidden: Tensor, q_start: int, layer: int):
        key = (q_start, self.adapter.rotary_kind(layer))
        if key not in self._rotary:
            self._rotary[key] = self.adapter.position_embeddings(hidden, self.position_ids[:, q_start:], layer)
        return self._rotary[key]

    def _mask(self, layer: int, q_start: int, rows: Tensor | None, hidden: Tensor) -> Tensor | None:
        impl = attention_impl(self.model)
        if impl not in ("eager", "sdpa") and not impl.startswith("engine"):
            raise EngineError(f"the restart runner supports eager and sdpa attention, not {impl!r}")
        window = self.adapter.sliding_window(layer)
        as_bool = impl == "sdpa"
        if self.padding is None:
            key = (q_start, window, as_bool, hidden.dtype, hidden.device)
            if key not in self._masks:
                self._masks[key] = causal_mask(q_start, self.seq - q_start, self.seq, window, None, as_bool,
                                               hidden.dtype, hidden.device)
            return self._masks[key]
        padding = self.padding if rows is None else self.padding[rows.to(self.padding.device)]
        return causal_mask(q_start, self.seq - q_start, self.seq, window, padding, as_bool, hidden.dtype,
                           hidden.device)

    def layer(self, layer: int, hidden: Tensor, q_start: int = 0, rows: Tensor | None = None,
              computed: tuple[Tensor, Tensor, int] | None = None) -> Tensor:
        """Block ``layer`` on ``hidden`` [rows, seq - q_start, d]; row i is prompt ``rows[i]``.

        Keys and values of positions before ``q_start`` come from the record, or, for positions
        from ``computed[2]`` on, from ``computed[:2]`` (this batch's own, already computed).
        """
        block = self.adapter.blocks[layer]
        self.kv.rows = rows
        self.kv.prefix_len = q_start if computed is None else computed[2]
        self.kv.computed = None if computed is None else computed[:2]
        kwargs = dict(attention_mask=self._mask(layer, q_start, rows, hidden),
                      position_ids=self.position_ids[:, q_start:], past_key_values=self.kv, use_cache=False)
        if self.adapter.spec.rotary is not None:
            kwargs["position_embeddings"] = self._position_embeddings(hidden, q_start, layer)
        try:
            return _first(block(hidden, **kwargs))
        finally:
            self.kv.computed = None

    def last_layer_at(self, hidden: Tensor, q_start: int, start: int, rows: Tensor | None = None) -> Tensor:
        """The last block for positions ``start``.. only (its output at earlier positions feeds
        nothing when only later positions are read): the keys and values of positions
        ``q_start .. start - 1`` are computed from ``hidden`` without running the rest of the block."""
        layer, cut = self.adapter.n_layers - 1, start - q_start
        rotary = None
        if self.adapter.spec.rotary is not None:
            cos, sin = self._position_embeddings(hidden, q_start, layer)
            rotary = (cos[:, :cut], sin[:, :cut])
        keys, values = self.adapter.keys_values(layer, hidden[:, :cut], rotary)
        return self.layer(layer, hidden[:, cut:], start, rows, computed=(keys, values, q_start))

    @torch.no_grad()
    def record(self) -> list[Tensor]:
        """Full pass of the target prompts: returns resid_pre of every layer plus the final residual
        (length n_layers + 1) and keeps every layer's keys and values for later restarts."""
        hidden = self.adapter.embed(self.input_ids.to(self.position_ids.device), self.position_ids)
        resid = [hidden]
        self.kv.recording = True
        try:
            for layer in range(self.adapter.n_layers):
                hidden = self.layer(layer, hidden)
                resid.append(hidden)
        finally:
            self.kv.recording = False
        return resid
