"""The token-mixing probe set (Dutta et al. 2024 §3.6): word pairs inside PrOntoQA-style questions,
labelled by how the ontology relates them.

Each question holds three disjoint concept groups, an entity and four adjectives:

    E is A1.  A1s are A2s.  A2 is A3.  A3s are p.        (group A, the entity's chain)
    B1s are B2s.  B2s are not A3s.  B1 is not q.         (group B, a negated link to A)
    C1 is C2.  C2s are not r.  C1s are not s.            (group C, no link to A or B)

in a shuffled order, then the query (``True or false: E is p. Let us think step by step.``). Pairs:

* **positive**: the subject and object of an affirmative sentence (adjacent in the ontology, in one
  sentence);
* **negative**: the same in a sentence with "not";
* **unrelated**: two concept or entity words of the question with no path between them in the
  ontology (the graph of every sentence, negated ones included): group C against A, B and E.

Each word is located at its occurrence in the pair's sentence (unrelated: its first occurrence), by
character offset into the question. Classes are balanced per split by truncation, as the paper did.
The **test** split uses concept and entity names never seen in training: pronounceable nonce words
generated from the seed (the paper's test set had its own novel names); the adjectives are shared.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modules.core.io import atomic_file

from modules.studies.ontology.data.generator import LET_US, GeneratorError
from modules.studies.ontology.vocabulary import Vocabulary

LABELS = ("positive", "negative", "unrelated")
SPLITS = ("train", "test")
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "sn", "tr")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("m", "n", "p", "t", "k", "l", "rp", "nt", "mp")
PAIR_SCHEMA = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("item_id", pa.string()), ("question", pa.string()),
    ("word1", pa.string()), ("word2", pa.string()), ("char1", pa.int64()), ("char2", pa.int64()),
    ("label", pa.string()), ("kind", pa.string()),
])
COLUMNS = tuple(PAIR_SCHEMA.names)


@dataclass(frozen=True)
class ProbeDataConfig:
    seed: int
    train_items: int
    test_items: int

    def __post_init__(self):
        for name in ("train_items", "test_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GeneratorError(f"probe_data.{name} must be a positive integer, got {value!r}")


def rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"ontology-probes/{seed}/{stream}")


def novel_words(r: random.Random, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct pronounceable nonce words (onset-vowel-onset-vowel-coda), none in ``taken``."""
    out: list[str] = []
    seen = {w.lower() for w in taken}
    for _ in range(100 * n):
        word = r.choice(ONSETS) + r.choice(VOWELS) + r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS)
        if word not in seen and not any(word.startswith(s) or s.startswith(word) for s in seen):
            seen.add(word)
            out.append(word)
            if len(out) == n:
                return out
    raise GeneratorError(f"could not draw {n} distinct novel words")


def plural(word: str) -> str:
    return word + "es" if word.endswith(("us", "s", "x")) else word + "s"


def _sentence(subject: str, obj: str, is_concept: bool, plural_form: bool, negated: bool) -> str:
    # "A is B." / "As are Bs." (adjectives stay singular), with "not" after the verb when negated.
    verb = ("are" if plural_form else "is") + (" not" if negated else "")
    subj = plural(subject) if plural_form else subject
    obj = plural(obj) if plural_form and is_concept else obj
    return f"{subj[0].upper()}{subj[1:]} {verb} {obj}."


def question(r: random.Random, concepts: list[str], entity: str, adjectives: list[str]) -> tuple[str, list[dict]]:
    """One question from 7 concepts (A1 A2 A3 B1 B2 C1 C2), an entity and 4 adjectives; its pairs."""
    a1, a2, a3, b1, b2, c1, c2 = concepts
    p, q, s_, t = adjectives
    # (subject, object, object is a concept, negated); the entity fact is always singular.
    facts = [(entity, a1, True, False), (a1, a2, True, False), (a2, a3, True, False), (a3, p, False, False),
             (b1, b2, True, False), (b2, a3, True, True), (b1, q, False, True),
             (c1, c2, True, False), (c2, s_, False, True), (c1, t, False, True)]
    r.shuffle(facts)
    texts, pairs, offset = [], [], 0
    for subject, obj, is_concept, negated in facts:
        plural_form = subject != entity and r.random() < 0.5
        text = _sentence(subject, obj, is_concept, plural_form, negated)
        words = text.rstrip(".").split()
        char1, char2 = offset, offset + text.rindex(words[-1])
        pairs.append({"word1": words[0], "word2": words[-1], "char1": char1, "char2": char2,
                      "label": "negative" if negated else "positive",
                      "kind": ("entity" if subject == entity else "concept") + "-" +
                              ("concept" if is_concept else "property")})
        texts.append(text)
        offset += len(text) + 1
    body = " ".join(texts)
    text = f"{body} True or false: {entity} is {p}. {LET_US}"
    first = {}  # the first occurrence of each concept/entity word, in any written form
    for name in (entity, a1, a2, a3, b1, b2, c1, c2):
        forms = sorted({name, name.capitalize(), plural(name), plural(name).capitalize()}, key=len, reverse=True)
        first[name] = re.search(r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b", body).start()
    for c in (c1, c2):
        for other in r.sample([entity, a1, a2, a3, b1, b2], 3):
            one, two = sorted([(c, first[c]), (other, first[other])], key=lambda x: x[1])
            pairs.append({"word1": _word(body, one[1]), "word2": _word(body, two[1]), "char1": one[1], "char2": two[1],
                          "label": "unrelated", "kind": ("entity" if entity in (c, other) else "concept") + "-concept"})
    return text, pairs


def _word(text: str, start: int) -> str:
    end = start
    while end < len(text) and text[end].isalpha():
        end += 1
    return text[start:end]


def generate_probe_pairs(config: ProbeDataConfig, vocab: Vocabulary) -> pd.DataFrame:
    """Both splits' pairs, balanced per split by truncation (deterministic by seed)."""
    if len(vocab.concepts) < 7:
        raise GeneratorError(f"a probe question needs 7 concepts; the vocabulary has {len(vocab.concepts)}")
    taken = {*vocab.concepts, *vocab.entities, *vocab.adjectives, *vocab.nonce, *vocab.false_concepts}
    words = rng(config.seed, "novel")
    novel_concepts = novel_words(words, 24, taken)
    novel_entities = [w.capitalize() for w in novel_words(words, 12, taken | set(novel_concepts))]
    rows = []
    for split, n, concepts, entities in (("train", config.train_items, list(vocab.concepts), list(vocab.entities)),
                                         ("test", config.test_items, novel_concepts, novel_entities)):
        r = rng(config.seed, split)
        split_rows = []
        for i in range(n):
            text, pairs = question(r, r.sample(concepts, 7), r.choice(entities), r.sample(vocab.adjectives, 4))
            for j, pair in enumerate(pairs):
                split_rows.append({"id": f"{split}-{i}-{j}", "split": split, "item_id": f"{split}-{i}",
                                   "question": text, **pair})
        frame = pd.DataFrame(split_rows, columns=list(COLUMNS))
        smallest = frame["label"].value_counts().reindex(list(LABELS), fill_value=0).min()
        balanced = frame.groupby("label", group_keys=False).sample(n=int(smallest), random_state=config.seed)
        rows.append(balanced.sort_values("id", key=lambda ids: ids.map(_id_order)))
    return pd.concat(rows, ignore_index=True)


def _id_order(pair_id: str) -> tuple:
    split, item, pair = pair_id.split("-")
    return SPLITS.index(split), int(item), int(pair)


def write_pairs(frame: pd.DataFrame, out_dir) -> None:
    with atomic_file(Path(out_dir) / "pairs.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(frame, schema=PAIR_SCHEMA, preserve_index=False), tmp)
