"""Word-level tokenizer of the fictional knowledge graph (study 3's model trained from scratch).

The vocabulary has a fixed order, so the same tables give the same ids on every machine: ``<pad>``,
``<eos>``, the template words in the relations table's order of first use, ``is``, the punctuation
of the copy-list Patchscope format ("A: A, B: B, x:"), then the name pieces sorted. Words split on
whitespace and punctuation; an unknown word is an error, never a silent <unk>. Every entity name
must be at least two tokens, so that "the last token of e1" differs from e1's first token.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import pandas as pd
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modules.studies.hopping.data.graph import COPULA

PAD, EOS = "<pad>", "<eos>"
COPY_FORMAT = (":", ",", "x")   # the copy-list Patchscope prompt's punctuation and placeholder


class TokenizerError(ValueError):
    """A vocabulary or a name the graph tokenizer cannot take; the message is one line."""


def template_words(relations: pd.DataFrame) -> list[str]:
    """Template words in the table's row order, each at its first use."""
    words = (w for template in relations["template"] for w in template.split() if w != "{}")
    return list(dict.fromkeys(words))


def entity_names(entities: pd.DataFrame) -> list[str]:
    """Every primary name and alias (the empty alias means none)."""
    return [*entities["name"], *(a for a in entities["alias"] if a)]


def graph_vocabulary(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The full vocabulary in id order, specials first."""
    fixed = [PAD, EOS, *template_words(tables["relations"]), COPULA, *COPY_FORMAT]
    pieces = sorted({p for name in entity_names(tables["entities"]) for p in name.split()})
    clash = sorted(set(pieces) & set(fixed))
    if clash:
        raise TokenizerError(f"name pieces {clash} are also template words or punctuation")
    return list(dict.fromkeys([*fixed, *pieces]))


def build_graph_tokenizer(tables_or_vocabulary: Mapping[str, pd.DataFrame] | Sequence[str],
                          min_name_tokens: int = 2) -> PreTrainedTokenizerFast:
    """From the graph's tables (the vocabulary is derived, and every name checked to be at least
    ``min_name_tokens`` tokens) or from a vocabulary in id order (specials prepended if missing)."""
    if isinstance(tables_or_vocabulary, Mapping):
        vocabulary = graph_vocabulary(tables_or_vocabulary)
    else:
        vocabulary = list(dict.fromkeys([PAD, EOS, *tables_or_vocabulary]))
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocabulary)}, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=EOS,
                                        padding_side="right")
    if isinstance(tables_or_vocabulary, Mapping):
        check_name_tokens(tokenizer, entity_names(tables_or_vocabulary["entities"]), min_name_tokens)
    return tokenizer


def name_token_counts(tokenizer: PreTrainedTokenizerFast, names: Iterable[str]) -> list[int]:
    return [len(tokenizer(name, add_special_tokens=False)["input_ids"]) for name in names]


def check_name_tokens(tokenizer: PreTrainedTokenizerFast, names: Iterable[str], min_name_tokens: int = 2) -> None:
    """One-line error at the first name shorter than ``min_name_tokens`` tokens."""
    names = list(names)
    for name, count in zip(names, name_token_counts(tokenizer, names)):
        if count < min_name_tokens:
            what = "a single token" if count == 1 else f"{count} tokens"
            raise TokenizerError(f"entity name {name!r} is {what}; names must be at least {min_name_tokens} "
                                 "tokens so that e1's last token is a position of its own")
