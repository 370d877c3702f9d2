"""Greedy decoding with the KV cache, for prompts of equal length (no padding to mask)."""
from __future__ import annotations

import torch


@torch.inference_mode()
def greedy_decode(model, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Return [n, max_new_tokens] generated ids; after a sequence emits <eos> it repeats <eos>."""
    out = model(input_ids=prompt_ids, use_cache=True)
    past = out.past_key_values
    next_token = out.logits[:, -1].argmax(-1)
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    generated = []
    for step in range(max_new_tokens):
        next_token = torch.where(done, torch.full_like(next_token, eos_id), next_token)
        generated.append(next_token)
        done |= next_token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        out = model(input_ids=next_token[:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_token = out.logits[:, -1].argmax(-1)
    result = torch.stack(generated, dim=1)
    if result.shape[1] < max_new_tokens:
        pad = torch.full((result.shape[0], max_new_tokens - result.shape[1]), eos_id,
                         dtype=result.dtype, device=result.device)
        result = torch.cat([result, pad], dim=1)
    return result


def greedy_decode_mixed(model, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                        max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Greedy-decode prompts of several lengths by running each length group separately."""
    result = torch.empty((input_ids.shape[0], max_new_tokens), dtype=torch.long, device=input_ids.device)
    for length in prompt_lengths.unique().tolist():
        rows = (prompt_lengths == length).nonzero(as_tuple=True)[0]
        result[rows] = greedy_decode(model, input_ids[rows, :length], max_new_tokens, eos_id)
    return result


def exact_match(generated: torch.Tensor, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """[n] bool: the generated answer (through <eos>) equals the reference answer + <eos>."""
    n, width = generated.shape
    answer_lengths = lengths - prompt_lengths
    offsets = torch.arange(width, device=generated.device).unsqueeze(0)
    source = (prompt_lengths.unsqueeze(1) + offsets).clamp(max=input_ids.shape[1] - 1)
    reference = input_ids.gather(1, source)
    in_answer = offsets < answer_lengths.unsqueeze(1)
    fits = answer_lengths <= width
    return fits & ((generated == reference) | ~in_answer).all(dim=1)
