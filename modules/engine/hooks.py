"""Sites and the PyTorch hooks that read and write them.

A site is ``kind.layer`` (see :mod:`modules.engine.adapters` for the layer convention), with an
optional selection of positions and heads. Every activation is seen in one canonical layout:

    resid_pre, resid_post, attn_out, mlp_out   [batch, pos, d_model]
    head_out, q, k, v                          [batch, pos, heads, head_dim]
    pattern                                    [batch, heads, query_pos, key_pos]

:func:`intervene` installs ``fn(selected) -> new values | None`` on any set of sites; capture,
patch, ablate and steer are thin layers over it. Positions index the sequence of the forward
call that the hook sees (negative positions count from its end).
"""
from __future__ import annotations

import inspect
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import Adapter, EngineError, get_adapter

RESID_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
HEAD_KINDS = ("head_out", "q", "k", "v")
SITE_KINDS = RESID_KINDS + HEAD_KINDS + ("pattern",)


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int
    positions: tuple[int, ...] | None = None   # None: every position
    heads: tuple[int, ...] | None = None       # None: every head (head sites and pattern only)

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.layer}"


_KEY = re.compile(r"^([a-z_]+)\.(-?\d+)$")


def as_site(site: Site | str | tuple, adapter: Adapter | None = None, positions=None, heads=None) -> Site:
    """Parse ``"head_out.2"``, ``("head_out", 2)`` or a :class:`Site`, and validate it."""
    if isinstance(site, str):
        match = _KEY.match(site)
        if not match:
            raise EngineError(f"site {site!r} must look like 'kind.layer', e.g. 'resid_pre.3'")
        site = Site(match.group(1), int(match.group(2)))
    elif isinstance(site, tuple):
        site = Site(*site)
    elif not isinstance(site, Site):
        raise EngineError(f"a site is a 'kind.layer' string or a Site, got {site!r}")
    if positions is not None or heads is not None:
        site = Site(site.kind, site.layer, site.positions if positions is None else positions,
                    site.heads if heads is None else heads)
    if site.kind not in SITE_KINDS:
        raise EngineError(f"unknown site {site.kind!r}; sites are {', '.join(SITE_KINDS)}")
    positions = None if site.positions is None else tuple(_index(p, "position") for p in _as_list(site.positions))
    heads = None if site.heads is None else tuple(_index(h, "head") for h in _as_list(site.heads))
    if heads is not None and site.kind in RESID_KINDS:
        raise EngineError(f"site {site.kind} has no heads; heads apply to {', '.join(HEAD_KINDS)}, pattern")
    if adapter is not None:
        adapter.check_layer(site.layer)
        for head in heads or ():
            adapter.check_head(head, site.kind)
    return Site(site.kind, site.layer, positions, heads)


def _index(value, what: str) -> int:
    """An integer index; 2.5 or True is refused rather than truncated."""
    if isinstance(value, bool) or int(value) != value:
        raise EngineError(f"a {what} index must be an integer, got {value!r}")
    return int(value)


def _as_list(values) -> list:
    if isinstance(values, Tensor):
        return values.reshape(-1).tolist()
    if isinstance(values, int):
        return [values]
    return list(values)


def check_positions(positions: Iterable[int], length: int) -> list[int]:
    """Resolve negative positions and reject those outside a sequence of ``length``."""
    out = []
    for p in positions:
        if not -length <= p < length:
            raise EngineError(f"position {p} out of range for a sequence of length {length} "
                              f"(allowed {-length}..{length - 1})")
        out.append(p % length)
    return out


def _layout(kind: str) -> tuple[int, int | None]:
    """(position dim, head dim) of a kind's canonical layout."""
    if kind == "pattern":
        return 2, 1
    return 1, (2 if kind in HEAD_KINDS else None)


def selection_index(kind: str, positions, heads, length: int, device) -> tuple:
    """An index tuple that picks ``positions`` x ``heads`` out of a canonical activation."""
    pos_dim, head_dim = _layout(kind)
    index: list = [slice(None)] * (max(pos_dim, head_dim or 0) + 1)
    pos = None if positions is None else torch.tensor(check_positions(positions, length), device=device)
    head = None if heads is None else torch.tensor(heads, device=device)
    if pos is not None and head is not None:  # adjacent advanced indices broadcast to [.., P, H, ..]
        first, second = (pos, head) if pos_dim < head_dim else (head, pos)
        index[min(pos_dim, head_dim)], index[max(pos_dim, head_dim)] = first[:, None], second[None, :]
    elif pos is not None:
        index[pos_dim] = pos
    elif head is not None:
        index[head_dim] = head
    return tuple(index)


# --- attention-function wrapper for patterns ---------------------------------------------
_PATTERN_IMPL = "engine_pattern"
_EAGER_BY_CLASS: dict[type, Callable] = {}


def _local_eager(module) -> Callable:
    """The eager attention function of the module's own modelling file."""
    cls = type(module)
    if cls not in _EAGER_BY_CLASS:
        fn = getattr(inspect.getmodule(cls), "eager_attention_forward", None)
        if fn is None:
            raise EngineError(f"{cls.__name__} has no eager attention function; patterns need one")
        _EAGER_BY_CLASS[cls] = fn
    return _EAGER_BY_CLASS[cls]


def _pattern_attention(module, query, key, value, attention_mask, **kwargs):
    out, weights = _local_eager(module)(module, query, key, value, attention_mask, **kwargs)
    changed = False
    for raw in module.__dict__.get("_engine_pattern_hooks", ()):
        new = raw(weights)
        if new is not None:
            weights, changed = new, True
    if changed:  # the rest of eager attention, on the new probabilities
        repeat = weights.shape[1] // value.shape[1]
        values = value.repeat_interleave(repeat, dim=1) if repeat > 1 else value
        out = torch.matmul(weights.to(value.dtype), values).transpose(1, 2).contiguous()
    return out, weights


def _register_pattern_impl() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    if _PATTERN_IMPL not in AttentionInterface._global_mapping:
        AttentionInterface.register(_PATTERN_IMPL, _pattern_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(_PATTERN_IMPL, eager_mask)


@contextmanager
def pattern_mode(model) -> Iterator[None]:
    """Route attention through the engine's eager wrapper so patterns can be read and written."""
    _register_pattern_impl()
    state = model.__dict__.setdefault("_engine_pattern_mode", [0, None])
    if state[0] == 0:
        state[1] = model.config._attn_implementation
        model.config._attn_implementation = _PATTERN_IMPL
    state[0] += 1
    try:
        yield
    finally:
        state[0] -= 1
        if state[0] == 0:
            model.config._attn_implementation = state[1]


def attention_impl(model) -> str:
    return model.config._attn_implementation


# --- raw hooks: fn(canonical activation) -> new activation | None ----------------------------
def _first(output):
    """Decoder layers return a tensor in transformers 5 and a tuple before; attention a tuple."""
    return output if isinstance(output, Tensor) else output[0]


def _replace_first(output, new):
    return new if isinstance(output, Tensor) else (new, *output[1:])


def install_raw(adapter: Adapter, kind: str, layer: int, raw: Callable[[Tensor], Tensor | None],
                stack: ExitStack) -> None:
    """Hook ``raw`` onto site ``kind.layer``; the handle is removed when ``stack`` closes."""
    spec, block = adapter.spec, adapter.block(layer)

    def on_output(module, args, output):
        act = _first(output)
        new = raw(act)
        return None if new is None else _replace_first(output, new)

    if kind == "resid_pre":
        def pre(module, args, kwargs):
            if args:
                new = raw(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = raw(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    elif kind == "resid_post":
        handle = block.register_forward_hook(on_output)
    elif kind in ("attn_out", "mlp_out"):
        handle = block.get_submodule(spec.attn_out if kind == "attn_out" else spec.mlp_out
                                     ).register_forward_hook(on_output)
    elif kind == "head_out":
        def pre_o(module, args):
            x = args[0]
            new = raw(x.view(*x.shape[:-1], adapter.n_heads, adapter.head_dim))
            return None if new is None else (new.reshape(x.shape), *args[1:])
        handle = block.get_submodule(spec.o_proj).register_forward_pre_hook(pre_o)
    elif kind in ("q", "k", "v"):
        module, chunk, n_heads = adapter.proj(layer, kind)
        width = n_heads * adapter.head_dim

        def on_proj(module, args, output):
            part = output[..., chunk * width:(chunk + 1) * width]
            new = raw(part.view(*part.shape[:-1], n_heads, adapter.head_dim))
            if new is None:
                return None
            if part.shape == output.shape:
                return new.reshape(output.shape)
            return torch.cat([output[..., :chunk * width], new.reshape(part.shape),
                              output[..., (chunk + 1) * width:]], dim=-1)
        handle = module.register_forward_hook(on_proj)
    elif kind == "pattern":
        attn = block.get_submodule(spec.attn)
        hooks = attn.__dict__.setdefault("_engine_pattern_hooks", [])
        hooks.append(raw)
        stack.enter_context(pattern_mode(adapter.model))
        stack.callback(hooks.remove, raw)
        return
    else:
        raise EngineError(f"unknown site {kind!r}; sites are {', '.join(SITE_KINDS)}")
    stack.callback(handle.remove)


def install_mask_hook(adapter: Adapter, layer: int, edit: Callable, stack: ExitStack) -> None:
    """Hook ``edit(mask, q_len, kv_len) -> mask`` onto the attention mask that block ``layer`` sees.

    ``mask`` is the 4-D mask the model built (boolean: True attends; float: additive), or a
    causal one made here when the model passed none (SDPA's unpadded fast path).
    """
    attn = adapter.block(layer).get_submodule(adapter.spec.attn)

    def pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask")
        q_len = hidden.shape[1]
        kv_len = mask.shape[-1] if mask is not None else q_len
        if mask is None:
            q_pos = torch.arange(q_len, device=hidden.device)[:, None]
            causal = q_pos >= torch.arange(kv_len, device=hidden.device)[None, :]
            mask = causal[None, None]
            if attention_impl(adapter.model) != "sdpa":
                mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
                    ~mask, torch.finfo(hidden.dtype).min)
        return args, {**kwargs, "attention_mask": edit(mask, q_len, kv_len)}

    handle = attn.register_forward_pre_hook(pre, with_kwargs=True)
    stack.callback(handle.remove)


# --- site-level interventions ------------------------------------------------------------------
def _site_raw(site: Site, fn: Callable[[Tensor], Tensor | None]) -> Callable:
    pos_dim, _ = _layout(site.kind)

    def raw(act: Tensor):
        if site.positions is None and site.heads is None:
            values = fn(act)
            return None if values is None else _fit(values, act, site)
        index = selection_index(site.kind, site.positions, site.heads, act.shape[pos_dim], act.device)
        values = fn(act[index])
        if values is None:
            return None
        new = act.clone()
        new[index] = _fit(values, new[index], site)
        return new
    return raw


def _fit(values: Tensor, like: Tensor, site: Site) -> Tensor:
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype)
    if values.shape == like.shape:
        return values
    if values.ndim == like.ndim and values.shape[0] == 1 and values.shape[1:] == like.shape[1:]:
        return values.expand_as(like)
    raise EngineError(f"values for {site.key} have shape {tuple(values.shape)} but the site selects "
                      f"{tuple(like.shape)}; source and target need the same prompt length and batch "
                      "size (or a batch of 1)")


@contextmanager
def intervene(model, interventions: Mapping[Site | str, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
    """Run ``fn(selected activation) -> replacement | None`` at each site while inside the block."""
    adapter = get_adapter(model)
    with ExitStack() as stack:
        for site, fn in interventions.items():
            site = as_site(site, adapter)
            install_raw(adapter, site.kind, site.layer, _site_raw(site, fn), stack)
        yield


class Activations(dict):
    """In-memory activations keyed ``"kind.layer"``; a :class:`Site` or ``(kind, layer)`` works too."""

    @staticmethod
    def _key(key) -> str:
        if isinstance(key, Site):
            return key.key
        if isinstance(key, tuple):
            return f"{key[0]}.{key[1]}"
        return key

    def __getitem__(self, key) -> Tensor:
        key = self._key(key)
        if not dict.__contains__(self, key):
            raise KeyError(f"site {key!r} was not captured; captured: {sorted(self)}")
        return dict.__getitem__(self, key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, self._key(key))


@contextmanager
def capture(model, sites: Iterable[Site | str], detach: bool = True) -> Iterator[Activations]:
    """Record the selected activations of the forward calls made inside the block.

    Keys are ``"kind.layer"``; a later forward call overwrites an earlier one. With
    ``detach=False`` the tensors stay in the autograd graph (for gradients).
    """
    adapter = get_adapter(model)
    store = Activations()
    sites = [as_site(site, adapter) for site in sites]
    keys = [site.key for site in sites]
    if len(set(keys)) != len(keys):
        raise EngineError(f"capture: each kind.layer may appear once, got {keys}")

    def recorder(site):
        def fn(act):
            if detach:
                store[site.key] = act.detach().clone()
                return None
            store[site.key] = act
            return act  # route the forward pass through the stored tensor so it gets gradients
        return fn

    with intervene(model, {site: recorder(site) for site in sites}):
        yield store


def capture_positions(model, ids: Tensor, sites: Iterable[Site | str], positions: Sequence[int],
                      batch_size: int = 500) -> dict[str, Tensor]:
    """``{"kind.layer": [n, len(positions), ...]}``: the sites' activations at ``positions`` of each
    row of ``ids`` ``[n, seq]``, in batches of ``batch_size`` rows (no gradients)."""
    sites, positions = list(sites), list(positions)
    chunks: dict[str, list[Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            with capture(model, sites) as acts:
                model(ids[start:start + batch_size])
            for key, value in acts.items():
                chunks.setdefault(key, []).append(value[:, positions])
    return {key: torch.cat(parts) for key, parts in chunks.items()}


@contextmanager
def patch(model, values: Mapping[Site | str, Tensor]) -> Iterator[None]:
    """Write ``values[site]`` (shaped like the site's selection, e.g. from :func:`capture`)."""
    with intervene(model, {site: (lambda act, v=value: v) for site, value in values.items()}):
        yield
