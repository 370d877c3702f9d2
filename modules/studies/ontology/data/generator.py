"""PrOntoQA-style items as Dutta et al. (2024) simplified them, their chain-of-thought subtasks and
corruptions, the few-shot examples, and the one-hop task (docs/ontology/data.md).

An item with ``h`` hops has an entity E, a chain of concepts C1..Ch and a property p:

    facts (top-down):  "Ch is p. ... C1 is C2. E is C1."        (each rule singular or plural)
    query:             "True or false: E is q."                  (q = p: True; another adjective: False)
    chain of thought:  "E is C1. C1 is C2. E is C2. ... Ch is p. E is p."

Every content word of the chain of thought is one next-word subtask: a sentence's subject is a
*decision*, the object of a restated fact a *copy*, the object of a derived sentence an *induction*.
For two hops that gives the paper's ten subtasks (decision 0, 2, 4, 6, 8; copy 1, 3, 7; induction 5, 9).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from modules.studies.ontology.vocabulary import Vocabulary

HOPS = (2, 3, 4)
ONTOLOGIES = ("fictional", "false")
KINDS = ("decision", "copy", "induction")
TYPES = ("entity", "concept", "property")
LET_US = "Let us think step by step."
WORD = re.compile(r"[A-Za-z]+")


class GeneratorError(ValueError):
    """Generator settings that cannot give the asked-for data; the message is one line."""


def rng(seed: int, stream: str) -> random.Random:
    # str seeds are hashed with SHA-512: stable across processes and platforms.
    return random.Random(f"ontology/{seed}/{stream}")


def check_hops(hops: int) -> int:
    if isinstance(hops, bool) or not isinstance(hops, int) or hops not in HOPS:
        raise GeneratorError(f"hops must be one of {', '.join(map(str, HOPS))}, got {hops!r}")
    return hops


@dataclass(frozen=True)
class Sentence:
    subject: str
    object: str
    plural: bool = False        # "As are Bs." rather than "A is B."
    derived: bool = False       # a conclusion of the chain of thought, not a restated fact

    def text(self, vocab: Vocabulary) -> str:
        if not self.plural:
            return f"{self.subject[0].upper()}{self.subject[1:]} is {self.object}."
        subject = vocab.plural(self.subject)
        obj = vocab.plural(self.object) if self.object not in vocab.adjectives else self.object
        return f"{subject[0].upper()}{subject[1:]} are {obj}."

    def words(self, vocab: Vocabulary) -> tuple[str, str]:
        """The subject and object as written."""
        found = WORD.findall(self.text(vocab))
        return found[0], found[-1]


@dataclass(frozen=True)
class Item:
    entity: str
    chain: tuple[str, ...]          # C1 .. Ch
    property: str
    query_property: str
    plural: tuple[bool, ...]        # per rule, bottom-up: C1->C2, ..., Ch->p
    ontology: str = "fictional"
    distractors: tuple[Sentence, ...] = field(default=())

    @property
    def label(self) -> bool:
        return self.query_property == self.property

    def rules(self) -> list[Sentence]:
        """The rules bottom-up: C1 -> C2, ..., Ch -> p."""
        targets = [*self.chain[1:], self.property]
        return [Sentence(a, b, plural) for a, b, plural in zip(self.chain, targets, self.plural)]

    def facts(self) -> list[Sentence]:
        """Top-down, as the paper's test questions: the property rule first, the entity fact last."""
        return [*reversed(self.rules()), Sentence(self.entity, self.chain[0])]

    def chain_of_thought(self) -> list[Sentence]:
        steps = [Sentence(self.entity, self.chain[0])]
        for i, rule in enumerate(self.rules()):
            if i:
                steps.append(Sentence(self.entity, rule.subject, derived=True))
            steps.append(rule)
        steps.append(Sentence(self.entity, self.property, derived=True))
        return steps


def render(item: Item, vocab: Vocabulary, shuffle: random.Random | None = None) -> dict[str, str]:
    """question (facts), query, cot, answer and the Input line of the prompt block."""
    facts = [*item.facts(), *item.distractors]
    if shuffle is not None:
        shuffle.shuffle(facts)
    question = " ".join(s.text(vocab) for s in facts)
    query = f"True or false: {item.entity} is {item.query_property}."
    cot = " ".join(s.text(vocab) for s in item.chain_of_thought())
    return {"question": question, "query": query, "cot": cot, "answer": f"{cot} {item.label}",
            "input": f"{question} {query} {LET_US}"}


def block(input_text: str, response: str = "") -> str:
    """One block of the paper's prompt; a test block ends right after ``### Response:\\n`` (plus the
    chain-of-thought prefix being continued)."""
    return f"### Input:\n{input_text}\n### Response:\n{response}"


def few_shot_prompt(shot_blocks: list[str], test_block: str) -> str:
    """Solved blocks, each followed by a blank line, then the test block."""
    return "".join(f"{b}\n\n" for b in shot_blocks) + test_block


# ---------------------------------------------------------------- sampling

def _concepts(vocab: Vocabulary, ontology: str) -> tuple[str, ...]:
    return vocab.concepts if ontology == "fictional" else tuple(vocab.false_concepts)


def sample_item(r: random.Random, vocab: Vocabulary, hops: int, label: bool, ontology: str = "fictional",
                families: tuple[str, ...] | None = None, distractors: int = 0) -> Item:
    """One item; ``distractors`` extra facts (the few-shot examples' two): a property of a chain
    concept from another family, and a chain concept said to be a nonce word."""
    if ontology not in ONTOLOGIES:
        raise GeneratorError(f"ontology must be one of {', '.join(ONTOLOGIES)}, got {ontology!r}")
    concepts = _concepts(vocab, ontology)
    if hops + 1 > len(concepts):
        raise GeneratorError(f"{hops} hops need {hops + 1} concepts; the vocabulary has {len(concepts)}")
    families = vocab.families(families) if families else tuple(vocab.properties)
    entity = r.choice(vocab.entities)
    chain = tuple(r.sample(concepts, hops))
    family = r.choice(families)
    prop = r.choice(vocab.properties[family])
    plural = tuple(r.random() < 0.5 for _ in range(hops))
    extra: list[Sentence] = []
    if distractors > 2:
        raise GeneratorError(f"at most 2 distractors per item, got {distractors}")
    if distractors:
        other = [f for f in vocab.properties if f != family]
        extra.append(Sentence(r.choice(chain), r.choice(vocab.properties[r.choice(other)]), r.random() < 0.5))
    if distractors > 1:
        extra.append(Sentence(r.choice(chain), r.choice(vocab.nonce)))
    derivable = {prop} | {s.object for s in extra}  # a False query asks for none of them
    query = prop if label else r.choice([a for a in vocab.adjectives if a not in derivable])
    return Item(entity, chain, prop, query, plural, ontology, tuple(extra))


# ---------------------------------------------------------------- subtasks and corruptions

def word_type(word: str, vocab: Vocabulary) -> str:
    low = word.lower()
    if word in vocab.entities:
        return "entity"
    if low in vocab.adjectives:
        return "property"
    singulars = {**{vocab.plural(c): c for c in (*vocab.concepts, *vocab.false_concepts)},
                 **{c: c for c in (*vocab.concepts, *vocab.false_concepts, *vocab.nonce)}}
    if low in singulars:
        return "concept"
    raise GeneratorError(f"word {word!r} is not in the vocabulary")


def _spans(text: str, offset: int = 0) -> list[tuple[int, str]]:
    return [(m.start() + offset, m.group()) for m in WORD.finditer(text)]


@dataclass(frozen=True)
class Subtask:
    index: int
    kind: str
    target: str
    target_type: str
    prefix: str            # the gold chain of thought before the target (no trailing space)


def subtasks(item: Item, vocab: Vocabulary) -> list[Subtask]:
    out, written = [], []
    for sentence in item.chain_of_thought():
        text = sentence.text(vocab)
        subject, obj = sentence.words(vocab)
        head = " ".join(written)
        out.append(Subtask(len(out), "decision", subject, word_type(subject, vocab), head))
        before_object = text[:text.rindex(obj)].rstrip()
        out.append(Subtask(len(out), "induction" if sentence.derived else "copy", obj, word_type(obj, vocab),
                           f"{head} {before_object}".strip()))
        written.append(text)
    return out


def forms(word: str, vocab: Vocabulary) -> set[str]:
    """Every written form of a word: both cases and, for a concept, singular and plural."""
    low = word.lower()
    singular = {vocab.plural(c): c for c in (*vocab.concepts, *vocab.false_concepts)}.get(low, low)
    written = {singular, vocab.plural(singular)} if word_type(word, vocab) == "concept" else {low}
    return written | {w[0].upper() + w[1:] for w in written}


def corruption_site(test_input: str, prefix: str, target: str, variant: str = "paper",
                    also: set[str] = frozenset()) -> tuple[str, int, str]:
    """Where the authors' rule corrupts: the most recent word of the generated prefix that starts
    with the target; without one, the most recent in the question and query (``variant="paper"``;
    for the copy of the property this is the query) or in the facts only (``"fact"``). Where the
    rule finds nothing ("butterflies" does not start with "butterfly"), the same search runs for the
    target's other forms ``also``.
    Returns (segment, character offset in that segment, the word)."""
    segments = (("cot", prefix),
                ("input", test_input if variant == "paper" else test_input.split(" True or false:")[0]))
    for match in (lambda w: w.startswith(target), lambda w: w in also):
        for segment, text in segments:
            hits = [(pos, w) for pos, w in _spans(text) if match(w)]
            if hits:
                return segment, *hits[-1]
    raise GeneratorError(f"the target {target!r} occurs neither in the prefix nor in the question")


def source_site(test_input: str, target: str, also: set[str] = frozenset()) -> int:
    """The target's source in the input (character offset): its last exact occurrence in the facts;
    else the last fact word that is another form of it (``also``: "Sterpuses" for "sterpus");
    else its last occurrence in the query."""
    facts = test_input.split(" True or false:")[0]
    words = _spans(facts)
    for match in (lambda w: w == target, lambda w: w in also):
        hits = [p for p, w in words if match(w)]
        if hits:
            return hits[-1]
    hits = [p for p, w in _spans(test_input) if w == target and p > len(facts)]
    if not hits:
        raise GeneratorError(f"the target {target!r} does not occur in the input")
    return hits[-1]


def replacements(r: random.Random, word: str, kind: str, item: Item, vocab: Vocabulary) -> list[str]:
    """Every different word of the same type in a random order, the corruption first: an entity, a
    concept outside the item's chain (so no other proof appears), or an adjective; written with the
    replaced word's capitalisation. The rest are the corruption's alternatives, in order, for a model
    whose tokenizer splits the first into another number of tokens (patching needs equal lengths)."""
    if kind == "entity":
        pool = [e for e in vocab.entities if e != word]
    elif kind == "concept":
        chain = set(item.chain)
        pool = [c for c in _concepts(vocab, item.ontology) if c not in chain and c != word.lower()]
    else:
        pool = [a for a in vocab.adjectives if a not in (word.lower(), item.property, item.query_property)]
    r.shuffle(pool)
    return [new[0].upper() + new[1:] if word[0].isupper() else new for new in pool]


def splice(text: str, offset: int, old: str, new: str) -> str:
    if text[offset:offset + len(old)] != old:
        raise GeneratorError(f"expected {old!r} at offset {offset}")
    return text[:offset] + new + text[offset + len(old):]
