"""Back-patching and Patchscope: a hidden state from (prompt A, layer ls, position p) written into
(prompt B, layer lt, position p') during the prompt pass only; generation then continues from the
KV cache, so the patch persists exactly as if every later step re-ran the patched prompt."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import ContextManager, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import RESID_KINDS, Site, as_site, capture, check_positions, intervene, patch


@dataclass
class Generation:
    tokens: Tensor          # [batch, n_new]
    logits: Tensor | None   # [batch, n_new, vocab]: the logits each new token was chosen from (None: not kept)


def suppressed_tokens(model, suppress_tokens: Sequence[int] | None = None) -> list[int]:
    """Token ids greedy decoding never picks: ``suppress_tokens``, or by default the model's own
    ``generation_config.suppress_tokens`` (what ``model.generate`` skips too)."""
    if suppress_tokens is None:
        suppress_tokens = getattr(getattr(model, "generation_config", None), "suppress_tokens", None) or ()
    return [int(t) for t in suppress_tokens]


def choose_tokens(logits: Tensor, suppress: Sequence[int] = (), *, sample: bool = False,
                  generator: torch.Generator | Sequence[torch.Generator] | None = None,
                  top_k: int | None = None) -> Tensor:
    """The next token of each row of ``logits`` ``[batch, vocab]``: the argmax, or (``sample``) a
    draw from the softmax, after removing the ``suppress`` ids (and all but the ``top_k`` largest).

    ``generator``: one for the whole batch, or one per row (a row's draw then depends only on its
    own logits and generator, not on the batch it runs in)."""
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(list(suppress), device=logits.device), float("-inf"))
    if not sample:
        return logits.argmax(-1)
    if top_k is not None:
        if top_k < 1:
            raise EngineError(f"top_k must be >= 1, got {top_k}")
        floor = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < floor, float("-inf"))
    probs = logits.float().softmax(-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    if len(generator) != len(probs):
        raise EngineError(f"{len(generator)} generators for a batch of {len(probs)} rows")
    return torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generator)])


@torch.no_grad()
def generate_greedy(model, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                    prompt_interventions: Mapping | None = None, prompt_patches: Mapping | None = None,
                    prompt_contexts: Iterable[ContextManager] = (), suppress_tokens: Sequence[int] | None = None,
                    past_key_values=None, sample: bool = False,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None,
                    top_k: int | None = None, logits_to_keep: int | None = None) -> Generation:
    """Greedy decoding with the KV cache; interventions, patches and ``prompt_contexts`` (any
    context managers, e.g. a :func:`~modules.engine.interventions.knockout`) act on the prompt
    pass only, and the decode steps run on the cache that pass left.

    Each new token is the argmax over the tokens the model may generate: the ids of
    :func:`suppressed_tokens` (by default the model's ``generation_config.suppress_tokens``, as in
    ``model.generate``; ``()`` for none) are skipped. ``sample=True`` draws from the softmax
    instead (:func:`choose_tokens`, with ``generator`` and ``top_k``), so sampled and greedy
    decoding share this loop. The returned logits are the raw ones.
    ``past_key_values``: a cache of tokens before ``input_ids`` (see :class:`SharedPrefix`); the
    attention mask then covers them too. ``logits_to_keep=1`` (as ``model.generate`` does) makes the
    prompt pass unembed only its last position; the default unembeds all, as before.
    """
    if max_new_tokens < 1:
        raise EngineError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    suppress = suppressed_tokens(model, suppress_tokens)
    with ExitStack() as stack:
        if prompt_interventions:
            stack.enter_context(intervene(model, prompt_interventions))
        if prompt_patches:
            stack.enter_context(patch(model, prompt_patches))
        for context in prompt_contexts:
            stack.enter_context(context)
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        out = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                    use_cache=True, **extra)
    tokens, logits = [], []
    for step in range(max_new_tokens):
        step_logits = out.logits[:, -1]
        token = choose_tokens(step_logits, suppress, sample=sample, generator=generator, top_k=top_k)
        tokens.append(token)
        logits.append(step_logits)
        if step + 1 == max_new_tokens:
            break
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=attention_mask, past_key_values=out.past_key_values,
                    use_cache=True)
    return Generation(torch.stack(tokens, 1), torch.stack(logits, 1))


class SharedPrefix:
    """The keys and values of a prefix that every prompt of a study starts with (its few-shot
    examples), computed once; each batch then runs only its own tokens on a copy of them."""

    @torch.no_grad()
    def __init__(self, model, prefix_ids: Tensor):
        if prefix_ids.ndim != 2 or prefix_ids.shape[0] != 1 or prefix_ids.shape[1] < 1:
            raise EngineError(f"prefix_ids must be [1, length >= 1], got {tuple(prefix_ids.shape)}")
        self.model, self.ids = model, prefix_ids
        self._cache = model(input_ids=prefix_ids, use_cache=True).past_key_values

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def cache(self, batch: int):
        """A fresh copy for ``batch`` prompts (the model extends the cache it is given)."""
        import copy

        cache = copy.deepcopy(self._cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def mask(self, suffix_mask: Tensor) -> Tensor:
        return torch.cat([suffix_mask.new_ones(len(suffix_mask), self.length), suffix_mask], dim=1)

    @torch.no_grad()
    def logits(self, suffix_ids: Tensor, suffix_mask: Tensor | None = None) -> Tensor:
        """Logits of the suffix tokens ``[batch, suffix, vocab]``, as a full pass over prefix + suffix
        gives them. Pad on the right (``suffix_mask`` 0): earlier positions never see those tokens."""
        mask = None if suffix_mask is None else self.mask(suffix_mask)
        return self.model(input_ids=suffix_ids, attention_mask=mask, past_key_values=self.cache(len(suffix_ids)),
                          use_cache=True).logits

    def generate(self, suffix_ids: Tensor, max_new_tokens: int, **kwargs) -> Generation:
        """Greedy decoding after prefix + ``suffix_ids`` (a batch of equal-length suffixes)."""
        return generate_greedy(self.model, suffix_ids, max_new_tokens, past_key_values=self.cache(len(suffix_ids)),
                               **kwargs)


@torch.no_grad()
def patchscope(model, source_ids: Tensor, source_layer: int, source_position: int, target_ids: Tensor,
               target_layer: int, target_position: int, *, max_new_tokens: int = 1,
               source_site: str = "resid_post", target_site: str = "resid_post",
               source_attention_mask: Tensor | None = None, target_attention_mask: Tensor | None = None
               ) -> Generation:
    """Read ``source_site.source_layer`` at ``source_position`` of the source prompts, write it at
    ``target_site.target_layer``, ``target_position`` of the target prompts' prompt pass, then
    decode greedily. The source batch is the target's size or 1 (one state into every prompt)."""
    adapter = get_adapter(model)
    for name, kind in (("source_site", source_site), ("target_site", target_site)):
        if kind not in RESID_KINDS:
            raise EngineError(f"{name} must be one of {', '.join(RESID_KINDS)}, got {kind!r}")
    if source_ids.shape[0] not in (1, target_ids.shape[0]):
        raise EngineError(f"source batch {source_ids.shape[0]} must be 1 or the target batch {target_ids.shape[0]}")
    source = as_site(Site(source_site, source_layer, (source_position,)), adapter)
    target = as_site(Site(target_site, target_layer, (target_position,)), adapter)
    with capture(model, [source]) as acts:
        model(input_ids=source_ids, attention_mask=source_attention_mask)
    return generate_greedy(model, target_ids, max_new_tokens, attention_mask=target_attention_mask,
                           prompt_patches={target: acts[source]})


def backpatch(model, input_ids: Tensor, source_layer: int, target_layer: int, *,
              positions: Sequence[int] = (-1,), max_new_tokens: int = 1, site: str = "resid_post",
              attention_mask: Tensor | None = None) -> Generation:
    """Back-patching: the prompt's own states at ``positions`` from ``source_layer`` written into
    ``target_layer`` (usually earlier) of the same prompt's prompt pass, then greedy decoding."""
    adapter = get_adapter(model)
    source = as_site(Site(site, source_layer, tuple(positions)), adapter)
    target = as_site(Site(site, target_layer, tuple(positions)), adapter)
    with torch.no_grad(), capture(model, [source]) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask)
    return generate_greedy(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           prompt_patches={target: acts[source]})


# --- grids of (source layer, target layer) pairs ------------------------------------------------
class _PatchedPrompt:
    """One prompt patched at one position by many rows: a patch at ``position`` cannot change the
    tokens before it, so their keys and values run once (:class:`SharedPrefix`) and each batch of
    rows runs only the tokens from ``position`` on (where the patch sits at index 0)."""

    def __init__(self, model, input_ids: Tensor, position: int):
        self.model = model
        self.prefix = SharedPrefix(model, input_ids[:, :position]) if position > 0 else None
        self.suffix = input_ids[:, position:]

    def cache(self, batch: int):
        return None if self.prefix is None else self.prefix.cache(batch)

    @torch.no_grad()
    def states(self, site: str, n_layers: int) -> Tensor:
        """``[n_layers, d_model]``: every layer's ``site`` at the position, from one unpatched pass."""
        sites = [Site(site, layer, (0,)) for layer in range(n_layers)]
        with capture(self.model, sites) as acts:
            self.model(input_ids=self.suffix, past_key_values=self.cache(1), use_cache=True, logits_to_keep=1)
        return torch.stack([acts[s][0, 0] for s in sites])

    def generate(self, site: str, rows: Sequence[tuple[int, Tensor]], max_new_tokens: int, batch_size: int,
                 keep_logits: bool, sample: bool = False, seed: int = 0, top_k: int | None = None) -> Generation:
        """Row i writes ``rows[i][1]`` into ``site.rows[i][0]`` at the position during the prompt pass,
        then decodes; rows run ``batch_size`` at a time, each target layer's hook writing its own rows."""
        tokens, logits = [], []
        device = self.suffix.device
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            by_layer: dict[int, list[tuple[int, Tensor]]] = {}
            for row, (layer, vector) in enumerate(chunk):
                by_layer.setdefault(layer, []).append((row, vector))
            interventions = {Site(site, layer, (0,)): _row_writer(written, device) for layer, written in by_layer.items()}
            generator = [torch.Generator(device=device).manual_seed(seed) for _ in chunk] if sample else None
            out = generate_greedy(self.model, self.suffix.expand(len(chunk), -1), max_new_tokens,
                                  prompt_interventions=interventions, past_key_values=self.cache(len(chunk)),
                                  sample=sample, generator=generator, top_k=top_k, logits_to_keep=1)
            tokens.append(out.tokens)
            if keep_logits:
                logits.append(out.logits)
        return Generation(torch.cat(tokens), torch.cat(logits) if keep_logits else None)


def _row_writer(written: Sequence[tuple[int, Tensor]], device):
    """``fn(act [batch, 1, d]) -> act`` with the given rows' vectors written in, the other rows kept."""
    index = torch.tensor([row for row, _ in written], device=device)
    vectors = torch.stack([vector for _, vector in written])[:, None]

    def fn(act: Tensor) -> Tensor:
        return act.index_copy(0, index, vectors.to(device=act.device, dtype=act.dtype))
    return fn


def _one_prompt(ids: Tensor, name: str) -> Tensor:
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
        raise EngineError(f"{name} must be [1, length >= 1], got {tuple(ids.shape)}")
    return ids


def _check_grid(adapter, pairs, batch_size: int, max_new_tokens: int, **sites: str) -> list[tuple[int, int]]:
    for name, kind in sites.items():
        if kind not in RESID_KINDS:
            raise EngineError(f"{name} must be one of {', '.join(RESID_KINDS)}, got {kind!r}")
    if batch_size < 1:
        raise EngineError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise EngineError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pairs = list(pairs)
    if not pairs:
        raise EngineError("pairs is empty: give at least one (source_layer, target_layer)")
    checked = []
    for pair in pairs:
        if len(pair) != 2:
            raise EngineError(f"a pair is (source_layer, target_layer), got {pair!r}")
        checked.append((adapter.check_layer(pair[0]), adapter.check_layer(pair[1])))
    return checked


@torch.no_grad()
def backpatch_grid(model, input_ids: Tensor, position: int, pairs: Sequence[tuple[int, int]], *,
                   max_new_tokens: int = 10, source_states: Tensor | None = None, batch_size: int = 32,
                   site: str = "resid_post", keep_logits: bool = False) -> Generation:
    """:func:`backpatch` at one position for many ``(source_layer, target_layer)`` pairs, as rows of
    one batch: row i is ``backpatch(model, input_ids, *pairs[i], positions=[position])``.

    Any order of layers is allowed (back, identity, forward). ``source_states`` ``[n_layers,
    d_model]`` replaces the prompt's own states at ``position`` (e.g. another prompt's, as a
    control). The prompt's states come from one pass, the tokens before ``position`` run once,
    and each row decodes greedily from its own patched cache. ``keep_logits=False`` (the default)
    returns ``logits=None``: a grid's logits are pairs x new tokens x vocabulary floats.
    """
    adapter = get_adapter(model)
    pairs = _check_grid(adapter, pairs, batch_size, max_new_tokens, site=site)
    input_ids = _one_prompt(input_ids, "input_ids")
    position = check_positions([position], input_ids.shape[1])[0]
    prompt = _PatchedPrompt(model, input_ids, position)
    if source_states is None:
        source_states = prompt.states(site, adapter.n_layers)
    elif tuple(source_states.shape) != (adapter.n_layers, adapter.d_model):
        raise EngineError(f"source_states must be [n_layers, d_model] = [{adapter.n_layers}, {adapter.d_model}], "
                          f"got {tuple(source_states.shape)}")
    rows = [(target, source_states[source]) for source, target in pairs]
    return prompt.generate(site, rows, max_new_tokens, batch_size, keep_logits)


@torch.no_grad()
def patchscope_grid(model, source_ids: Tensor, source_position: int, target_ids: Tensor, target_position: int,
                    pairs: Sequence[tuple[int, int]], *, max_new_tokens: int = 10, batch_size: int = 32,
                    sample: bool = False, seed: int = 0, top_k: int | None = None,
                    source_site: str = "resid_post", target_site: str = "resid_post",
                    keep_logits: bool = False) -> Generation:
    """:func:`patchscope` for many ``(source_layer, target_layer)`` pairs of one source and one
    target prompt: every layer's source state from one pass, the target's tokens before
    ``target_position`` run once, pairs as rows. Greedy rows equal per-pair :func:`patchscope`.

    ``sample=True`` draws each token from the softmax (``top_k``: keep only the k largest logits;
    ``model.generate``'s default sampling uses 50 unless the model's generation config says
    otherwise). Every row has its own generator seeded with ``seed``, so a pair's sample does not
    depend on ``batch_size`` or on the other pairs (and is deterministic on CPU).
    """
    adapter = get_adapter(model)
    pairs = _check_grid(adapter, pairs, batch_size, max_new_tokens, source_site=source_site,
                        target_site=target_site)
    source_ids, target_ids = _one_prompt(source_ids, "source_ids"), _one_prompt(target_ids, "target_ids")
    source_position = check_positions([source_position], source_ids.shape[1])[0]
    target_position = check_positions([target_position], target_ids.shape[1])[0]
    sites = [Site(source_site, layer, (source_position,)) for layer in range(adapter.n_layers)]
    with capture(model, sites) as acts:
        model(input_ids=source_ids, logits_to_keep=1)
    states = torch.stack([acts[s][0, 0] for s in sites])
    rows = [(target, states[source]) for source, target in pairs]
    prompt = _PatchedPrompt(model, target_ids, target_position)
    return prompt.generate(target_site, rows, max_new_tokens, batch_size, keep_logits, sample=sample, seed=seed,
                           top_k=top_k)
