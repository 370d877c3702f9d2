"""Word-level tokenizer for the compact logic format (docs/logic/format.md)."""
from __future__ import annotations

import string

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
KEYWORDS = ["rules", "facts", "query", "answer", "or", "and", ">", ".", "1", "0", "undetermined"]
# Fixed order: the same vocabulary and ids on every machine and every run.
VOCAB = [PAD, EOS, *KEYWORDS, *string.ascii_uppercase]


def build_logic_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer; unknown words are an error, not a silent <unk>."""
    vocab = {token: index for index, token in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                   bos_token=EOS, padding_side="right")
