"""Greedy decoding with the KV cache, for prompts of equal length (no padding to mask), and its
exact match computed in one teacher-forced pass."""
from __future__ import annotations

import torch

from modules.engine.patchscope import generate_greedy


@torch.inference_mode()
def greedy_decode(model, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Return [n, max_new_tokens] generated ids; after a sequence emits <eos> it repeats <eos>."""
    tokens = generate_greedy(model, prompt_ids, max_new_tokens).tokens
    ended = (tokens == eos_id).long().cummax(dim=1).values.bool()
    after_eos = torch.cat([torch.zeros_like(ended[:, :1]), ended[:, :-1]], dim=1)
    return torch.where(after_eos, torch.full_like(tokens, eos_id), tokens)


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


def right_padded_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of right-padded sequences. Causal attention keeps the padding out of every earlier
    position, so the all-ones mask changes nothing (bit for bit); it tells transformers so, which
    stops its padding warning."""
    return right_padded_outputs(model, input_ids).logits


def right_padded_outputs(model, input_ids: torch.Tensor, hidden_states: bool = False):
    """The model's outputs on right-padded sequences (see ``right_padded_logits``), with every
    layer's residual stream when ``hidden_states``."""
    return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=hidden_states)


@torch.inference_mode()
def teacher_forced_exact_match(model, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                               lengths: torch.Tensor) -> torch.Tensor:
    """[n] bool, identical to greedy decoding's exact match, from one forward pass.

    Greedy decoding reproduces answer + <eos> iff every answer position's argmax, given the
    reference prefix, is the reference token: the first disagreement is exactly where decoding
    departs. Right padding is never seen by earlier positions (causal attention).
    """
    predicted = right_padded_logits(model, input_ids)[:, :-1].argmax(-1)
    in_answer = answer_targets(input_ids, prompt_lengths, lengths)
    return ((predicted == input_ids[:, 1:]) | ~in_answer).all(dim=1)


def answer_targets(input_ids: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[n, len-1] bool over next-token targets: True where the target is an answer token or <eos>."""
    target_pos = torch.arange(1, input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    return (target_pos >= prompt_lengths.unsqueeze(1)) & (target_pos < lengths.unsqueeze(1))
