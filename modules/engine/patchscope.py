"""Back-patching and Patchscope: a hidden state from (prompt A, layer ls, position p) written into
(prompt B, layer lt, position p') during the prompt pass only; generation then continues from the
KV cache, so the patch persists exactly as if every later step re-ran the patched prompt."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import RESID_KINDS, Site, as_site, capture, intervene, patch


@dataclass
class Generation:
    tokens: Tensor   # [batch, n_new]
    logits: Tensor   # [batch, n_new, vocab]: the logits each new token was chosen from


def suppressed_tokens(model, suppress_tokens: Sequence[int] | None = None) -> list[int]:
    """Token ids greedy decoding never picks: ``suppress_tokens``, or by default the model's own
    ``generation_config.suppress_tokens`` (what ``model.generate`` skips too)."""
    if suppress_tokens is None:
        suppress_tokens = getattr(getattr(model, "generation_config", None), "suppress_tokens", None) or ()
    return [int(t) for t in suppress_tokens]


@torch.no_grad()
def generate_greedy(model, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                    prompt_interventions: Mapping | None = None, prompt_patches: Mapping | None = None,
                    suppress_tokens: Sequence[int] | None = None, past_key_values=None) -> Generation:
    """Greedy decoding with the KV cache; interventions and patches act on the prompt pass only.

    Each new token is the argmax over the tokens the model may generate: the ids of
    :func:`suppressed_tokens` (by default the model's ``generation_config.suppress_tokens``, as in
    ``model.generate``; ``()`` for none) are skipped. The returned logits are the raw ones.
    ``past_key_values``: a cache of tokens before ``input_ids`` (see :class:`SharedPrefix`); the
    attention mask then covers them too.
    """
    if max_new_tokens < 1:
        raise EngineError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    suppress = suppressed_tokens(model, suppress_tokens)
    first = intervene(model, prompt_interventions) if prompt_interventions else nullcontext()
    patches = patch(model, prompt_patches) if prompt_patches else nullcontext()
    with first, patches:
        out = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                    use_cache=True)
    tokens, logits = [], []
    for step in range(max_new_tokens):
        step_logits = out.logits[:, -1]
        if suppress:
            token = step_logits.index_fill(-1, torch.tensor(suppress, device=step_logits.device),
                                           float("-inf")).argmax(-1)
        else:
            token = step_logits.argmax(-1)
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
