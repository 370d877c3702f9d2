"""Study 2's independent checker: every stored answer of the four tables re-derived from the text.

It imports nothing from the generator (``modules/studies/ontology/data/``), only the vocabulary that
says which word is an entity, a concept (and its plural) or a property. A generator bug then shows
up as a disagreement here instead of being reproduced. It reads the sentences with its own small
parser ("X is Y." / "Xs are Ys." / "Xs are p.", "True or false: E is q."), follows the entity's
concept chain through the facts bottom-up to write the chain of thought, and decides the label by
whether the queried adjective is derivable for the entity through any fact.

:func:`check_tables` gives, per table, one boolean column per check (aligned to the table's rows)
and a ``reason`` column naming the row and its failed checks, for the Great Expectations suites
(modules/studies/ontology/validation.py) to assert.

    checks = check_tables(read_tables(data_dir), CANONICAL)
    checks["items"][["cot_ok", "label_ok"]].all()
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from modules.studies.ontology.vocabulary import Vocabulary

ENTITY, CONCEPT, PROPERTY = "entity", "concept", "property"
DECISION, COPY, INDUCTION = "decision", "copy", "induction"
PROMPT_END = "Let us think step by step."       # the paper's Input line: question, query, this
QUERY_START = " True or false: "
WORD = re.compile(r"[A-Za-z]+")
SENTENCE = re.compile(r"([A-Za-z]+) (is|are) ([A-Za-z]+)\.")
QUERY = re.compile(r"True or false: ([A-Za-z]+) is ([A-Za-z]+)\.")
ONEHOP_LINE = re.compile(r"(.+\.) ([A-Za-z]+) is")   # facts, then "E is" awaiting the property
REASON = "reason"

ITEM_CHECKS = ("cot_ok", "label_ok", "answer_ok", "input_ok", "facts_ok", "meta_ok", "subtasks_complete")
SHOT_CHECKS = ("cot_ok", "label_ok", "answer_ok", "input_ok", "facts_ok", "meta_ok", "block_ok")
SUBTASK_CHECKS = ("item_known", "target_ok", "prefix_ok", "kind_ok", "type_ok", "variant_ok", "source_ok",
                  "corruption_ok", "replacement_ok", "site_ok")
ONEHOP_CHECKS = ("target_ok", "one_word_ok", "corruption_ok", "corrupted_target_ok")
PROOF_KEY = "proof_key"   # "entity|C1,..,Ch|property" of items and shots: the cross-table leak check


class CheckError(ValueError):
    """A text the checker cannot read or derive from; the message is the row's reason."""


class Lexicon:
    """Every written form of the vocabulary's words -> (lemma, type): an entity as written, a
    concept (or nonce word) in the singular, an adjective."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.nonce = frozenset(vocab.nonce)
        self.words: dict[str, tuple[str, str]] = {e: (e, ENTITY) for e in vocab.entities}
        self.words.update({a: (a, PROPERTY) for a in vocab.adjectives})
        for concept in (*vocab.concepts, *vocab.false_concepts, *vocab.nonce):
            self.words[concept] = self.words[vocab.plural(concept)] = (concept, CONCEPT)

    def read(self, word: Any) -> tuple[str, str] | None:
        """(lemma, type), allowing the capital of a sentence start; None for any other word."""
        if not isinstance(word, str) or not word:
            return None
        return self.words.get(word) or self.words.get(word[0].lower() + word[1:])

    def lemma(self, word: Any) -> str | None:
        return (self.read(word) or (None, None))[0]

    def type_of(self, word: Any) -> str | None:
        return (self.read(word) or (None, None))[1]

    def written(self, lemma: str, plural: bool) -> str:
        return self.vocab.plural(lemma) if plural else lemma


@dataclass(frozen=True)
class Fact:
    subject: str    # lemma
    object: str     # lemma
    kind: str       # the object's type: concept (a nonce word too) or property
    text: str       # as written: a chain of thought restates it verbatim
    at: int         # character offset of the sentence in its text

    @property
    def object_at(self) -> int:
        return self.at + len(self.text) - 1 - len(WORD.findall(self.text)[-1])


@dataclass(frozen=True)
class Step:
    text: str
    derived: bool   # "E is Ck." / "E is p.": a conclusion, not a restated fact


@dataclass(frozen=True)
class Slot:
    """One next-word subtask of a chain of thought: a sentence's subject or object."""
    start: int
    word: str
    kind: str


@dataclass(frozen=True)
class Derivation:
    entity: str
    query: str
    chain: tuple[str, ...]
    label: bool
    proofs: Mapping[str, tuple[Step, ...]]  # each property of the last chain concept -> its CoT
    facts: tuple[Fact, ...]

    def proof(self, stored: Any = None) -> tuple[str, tuple[Step, ...]]:
        """(property, steps) of the chain of thought to expect: the one proving the query when there
        is one; otherwise (a False query) the only one, or, where a shot's distractor gives the last
        concept a second property, the stored one if it is among them (the text cannot tell)."""
        if self.query in self.proofs:
            return self.query, self.proofs[self.query]
        for prop, steps in self.proofs.items():
            if cot_text(steps) == stored:
                return prop, steps
        return next(iter(self.proofs.items()))

    def key(self, stored_cot: Any = None) -> str:
        return f"{self.entity}|{','.join(self.chain)}|{self.proof(stored_cot)[0]}"


def cot_text(steps: tuple[Step, ...]) -> str:
    return " ".join(s.text for s in steps)


def slots(steps: tuple[Step, ...]) -> list[Slot]:
    """The content words of a chain of thought in order, two a sentence: the subject (a decision),
    the object (a copy of a restated fact, an induction of a derived sentence)."""
    out, offset = [], 0
    for step in steps:
        words = list(WORD.finditer(step.text))
        out.append(Slot(offset + words[0].start(), words[0].group(), DECISION))
        out.append(Slot(offset + words[-1].start(), words[-1].group(), INDUCTION if step.derived else COPY))
        offset += len(step.text) + 1
    return out


# ---------------------------------------------------------------- parsing

def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


def parse_fact(text: str, at: int, lex: Lexicon) -> Fact:
    """One fact; the words must agree in number and case ("Impuses are sterpuses.", "Rex is cat.")."""
    match = SENTENCE.fullmatch(text)
    if not match:
        raise CheckError(f"not a fact sentence: {text!r}")
    subject, verb, obj = match.groups()
    plural = verb == "are"
    s, o = lex.read(subject), lex.read(obj)
    if s is None or o is None:
        raise CheckError(f"a word outside the vocabulary in {text!r}")
    if s[1] == PROPERTY or o[1] == ENTITY or (s[1] == ENTITY and plural):
        raise CheckError(f"not an 'X is Y.' / 'Xs are Ys.' / 'Xs are p.' fact: {text!r}")
    want = (s[0] if s[1] == ENTITY else _capital(lex.written(s[0], plural)),
            o[0] if o[1] == PROPERTY else lex.written(o[0], plural))
    if (subject, obj) != want:
        raise CheckError(f"number or case does not agree in {text!r}")
    return Fact(s[0], o[0], o[1], text, at)


def parse_facts(text: Any, lex: Lexicon) -> tuple[Fact, ...]:
    """Single-spaced fact sentences."""
    if not isinstance(text, str) or not text:
        raise CheckError("the facts are not text")
    found = [(m.start(), m.group()) for m in re.finditer(r"[^ .][^.]*\.", text)]
    if " ".join(s for _, s in found) != text:
        raise CheckError("the facts are not single-spaced sentences")
    return tuple(parse_fact(s, at, lex) for at, s in found)


def parse_query(query: Any, lex: Lexicon) -> tuple[str, str]:
    match = QUERY.fullmatch(query) if isinstance(query, str) else None
    if not match or lex.type_of(match[1]) != ENTITY or lex.read(match[2]) != (match[2], PROPERTY):
        raise CheckError(f"not a query 'True or false: E is q.': {query!r}")
    return match[1], match[2]


def reachable(start: str, facts: tuple[Fact, ...]) -> set[str]:
    """Every lemma the start is, through any chain of facts."""
    seen, todo = set(), [start]
    while todo:
        subject = todo.pop()
        for fact in (f for f in facts if f.subject == subject):
            if fact.object not in seen:
                seen.add(fact.object)
                todo.append(fact.object)
    return seen


def derive(question: Any, query: Any, lex: Lexicon) -> Derivation:
    """The chain of thought and the label of a question and query."""
    facts = parse_facts(question, lex)
    entity, asked = parse_query(query, lex)

    def about(subject: str, kind: str) -> list[Fact]:
        return [f for f in facts if f.subject == subject and f.kind == kind and f.object not in lex.nonce]

    first = [f for f in facts if f.subject == entity]
    if len(first) != 1 or first[0].kind != CONCEPT or first[0].object in lex.nonce:
        raise CheckError(f"expected one fact 'E is C1.' about {entity}, found {len(first)}")
    steps, chain = [Step(first[0].text, False)], [first[0].object]
    while rules := about(chain[-1], CONCEPT):
        if len(rules) > 1 or rules[0].object in chain:
            raise CheckError(f"the concept chain of {entity} branches or loops at {chain[-1]!r}")
        chain.append(rules[0].object)
        steps += [Step(rules[0].text, False), Step(f"{entity} is {chain[-1]}.", True)]
    ends = about(chain[-1], PROPERTY)
    if not ends:
        raise CheckError(f"no property of the last concept {chain[-1]!r}")
    proofs = {f.object: (*steps, Step(f.text, False), Step(f"{entity} is {f.object}.", True)) for f in ends}
    return Derivation(entity, asked, tuple(chain), asked in reachable(entity, facts), proofs, facts)


def changed_words(old: Any, new: Any) -> list[tuple[int, str, str]] | None:
    """(offset in ``old``, old word, new word) of every word that differs; None when anything but
    whole words differs (a dropped sentence, a changed punctuation or space)."""
    if not isinstance(old, str) or not isinstance(new, str):
        return None
    a, b = re.split(r"([A-Za-z]+)", old), re.split(r"([A-Za-z]+)", new)
    if len(a) != len(b) or a[0::2] != b[0::2]:
        return None
    out, offset = [], 0
    for i, (x, y) in enumerate(zip(a, b)):
        if i % 2 and x != y:
            out.append((offset, x, y))
        offset += len(x)
    return out


def rule_site(test_input: str, prefix: str, target: str, variant: str,
              lex: Lexicon) -> tuple[str, int, str] | None:
    """Where the authors' corruption rule strikes: the most recent word starting with the target,
    in the generated prefix, else in the question and query (``paper``) or the facts alone
    (``fact``); where no word starts so ("butterflies" for "butterfly"), the same search for any
    form of the target. (segment, offset in it, word)."""
    facts_end = test_input.find(QUERY_START)
    searched = (("cot", prefix), ("input", test_input if variant == "paper" else test_input[:max(facts_end, 0)]))
    lemma = lex.lemma(target)
    for match in (lambda w: w.startswith(target), lambda w: lemma is not None and lex.lemma(w) == lemma):
        for segment, text in searched:
            hits = [m for m in WORD.finditer(text) if match(m.group())]
            if hits:
                return segment, hits[-1].start(), hits[-1].group()
    return None


def word_at(text: Any, offset: Any) -> str | None:
    """The whole word starting at ``offset``, or None."""
    if not isinstance(text, str) or not isinstance(offset, int) or not 0 <= offset < len(text):
        return None
    if offset and text[offset - 1].isalpha():
        return None
    match = WORD.match(text, offset)
    return match.group() if match else None


# ---------------------------------------------------------------- per-table checks

def _run(frame: pd.DataFrame, columns: tuple[str, ...], names: tuple[str, ...],
         check: Callable[[dict], dict[str, Any]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """``check`` on every row (a missing column reads as NaN); a CheckError fails all of the row's
    checks with its message. The boolean ``names``, the ``extra`` values (None where unknown), and
    ``reason``: the row id and its failed checks, "" when none."""
    results, reasons = [], []
    for row in frame.reindex(columns=list(dict.fromkeys(("id", *columns)))).to_dict("records"):
        try:
            result, note = check(row), ""
        except CheckError as error:
            result, note = {}, str(error)
        failed = [n for n in names if result.get(n) is not True]
        reasons.append(f"{row['id']}: {', '.join(failed)}{f' ({note})' if note else ''}" if failed else "")
        results.append([result.get(n) is True for n in names] + [result.get(n) for n in extra])
    out = pd.DataFrame(results, index=frame.index, columns=[*names, *extra])
    out = out.astype({n: bool for n in names})
    out[REASON] = pd.Series(reasons, index=frame.index, dtype=object)
    return out


def _problems(row: dict, lex: Lexicon, distractors: int,
              meta: tuple[str, ...]) -> tuple[Derivation, str, tuple[Step, ...], dict[str, bool]]:
    """The checks an item and a shot share. Test items have no distractor; a shot has two off its
    proof path: a chain concept's property and a chain concept said to be a nonce word."""
    d = derive(row["question"], row["query"], lex)
    prop, steps = d.proof(row["cot"])
    cot = cot_text(steps)
    proof = {s.text for s in steps}
    restated = [s for s in steps if not s.derived]
    off = sorted("nonce" if f.object in lex.nonce else f.kind for f in d.facts
                 if f.text not in proof and f.subject in d.chain)
    expected = {"entity": d.entity, "chain": ",".join(d.chain), "hops": len(d.chain), "property": prop,
                "query_property": d.query, "family": _family(lex, prop)}
    return d, prop, steps, {
        "cot_ok": row["cot"] == cot,
        "label_ok": isinstance(row["label"], (bool, np.bool_)) and bool(row["label"]) == d.label,
        "answer_ok": row["answer"] == f"{cot} {d.label}",
        "input_ok": row["input"] == f"{row['question']} {row['query']} {PROMPT_END}",
        "facts_ok": len(d.facts) == len(restated) + distractors and off == (["nonce", PROPERTY] if distractors else []),
        "meta_ok": all(row[name] == expected[name] for name in meta),
    }


def _family(lex: Lexicon, adjective: str) -> str | None:
    return next((f for f, words in lex.vocab.properties.items() if adjective in words), None)


ITEM_META = ("entity", "chain", "hops", "property", "query_property", "family")
SHOT_META = ("entity", "chain", "hops", "property")
TEXT = ("question", "query", "cot", "answer", "input", "label")


def check_items(items: pd.DataFrame, lex: Lexicon, subtasks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The item checks, the proof key, and ``subtasks_complete``: the item has one row per content
    word of its re-derived chain of thought, plus the ``fact`` variant of the property copy."""
    have = _subtask_sets(subtasks)

    def check(row: dict) -> dict[str, Any]:
        d, _, steps, result = _problems(row, lex, 0, ITEM_META)
        found = slots(steps)
        want = sorted([(i, "paper") for i in range(len(found))] +
                      [(i, "fact") for i, s in enumerate(found) if s.kind == COPY and lex.type_of(s.word) == PROPERTY])
        return {**result, "subtasks_complete": have.get(row["id"], []) == want, PROOF_KEY: d.key(row["cot"])}
    return _run(items, (*TEXT, *ITEM_META), ITEM_CHECKS, check, (PROOF_KEY,))


def _subtask_sets(subtasks: pd.DataFrame | None) -> dict[Any, list]:
    if subtasks is None or not {"item_id", "subtask", "variant"} <= set(subtasks):
        return {}
    rows = subtasks[["item_id", "subtask", "variant"]].itertuples(index=False)
    out: dict[Any, list] = {}
    for item_id, subtask, variant in rows:
        out.setdefault(item_id, []).append((subtask, variant))
    return {k: sorted(v) for k, v in out.items()}


def check_shots(shots: pd.DataFrame, lex: Lexicon) -> pd.DataFrame:
    """The few-shot examples: as items, with their two distractors, and each block as the paper
    writes it."""
    def check(row: dict) -> dict[str, Any]:
        d, _, _, result = _problems(row, lex, 2, SHOT_META)
        block = f"### Input:\n{row['input']}\n### Response:\n{row['answer']}"
        return {**result, "block_ok": row["block"] == block, PROOF_KEY: d.key(row["cot"])}
    return _run(shots, (*TEXT, *SHOT_META, "block"), SHOT_CHECKS, check, (PROOF_KEY,))


@dataclass(frozen=True)
class _Item:
    input: str
    question_end: int
    cot: str
    slots: list[Slot]


def _items_by_id(items: pd.DataFrame, lex: Lexicon) -> dict[Any, _Item | CheckError]:
    """Each item's re-derived chain of thought and its content words (the first row of an id)."""
    out: dict[Any, _Item | CheckError] = {}
    for row in items.reindex(columns=["id", "question", "query", "cot", "input"]).to_dict("records"):
        if row["id"] in out:
            continue
        try:
            steps = derive(row["question"], row["query"], lex).proof(row["cot"])[1]
            if not isinstance(row["input"], str):
                raise CheckError("the item's input is not text")
            out[row["id"]] = _Item(row["input"], len(row["question"]), cot_text(steps), slots(steps))
        except CheckError as error:
            out[row["id"]] = CheckError(f"item {row['id']}: {error}")
    return out


SUBTASK_COLUMNS = ("item_id", "subtask", "kind", "variant", "target", "target_type", "prefix", "source_char",
                   "corrupt_segment", "corrupt_char", "corrupted_word", "replacement", "corrupted_input",
                   "corrupted_prefix")


def check_subtasks(subtasks: pd.DataFrame, items: pd.DataFrame, lex: Lexicon) -> pd.DataFrame:
    """Each subtask row against its item's re-derived chain of thought, and its corruption: exactly
    one word changed, where the authors' rule puts it, into another word of the target's type."""
    known = _items_by_id(items, lex)

    def check(row: dict) -> dict[str, Any]:
        item = known.get(row["item_id"])
        if item is None:
            return {"item_known": False}
        if isinstance(item, CheckError):
            raise item
        n = row["subtask"]
        slot = item.slots[n] if isinstance(n, int) and 0 <= n < len(item.slots) else None
        target, kind = row["target"], lex.type_of(row["target"])
        source = word_at(item.input, row["source_char"])
        changes = {"input": changed_words(item.input, row["corrupted_input"]),
                   "cot": changed_words(row["prefix"], row["corrupted_prefix"])}
        site = rule_site(item.input, item.cot[:slot.start].rstrip(), slot.word, row["variant"], lex) if slot else None
        return {
            "item_known": True,
            "target_ok": slot is not None and target == slot.word,
            "prefix_ok": slot is not None and row["prefix"] == item.cot[:slot.start].rstrip(),
            "kind_ok": slot is not None and row["kind"] == slot.kind,
            "type_ok": kind is not None and row["target_type"] == kind,
            "variant_ok": row["variant"] == "paper" or (
                row["variant"] == "fact" and slot is not None and slot.kind == COPY
                and lex.type_of(slot.word) == PROPERTY),
            "source_ok": source is not None and row["source_char"] < item.question_end
                         and lex.lemma(source) is not None and lex.lemma(source) == lex.lemma(target),
            "corruption_ok": None not in changes.values() and [
                (seg, *c) for seg, cs in changes.items() for c in cs] == [
                (row["corrupt_segment"], row["corrupt_char"], row["corrupted_word"], row["replacement"])],
            "replacement_ok": kind is not None and lex.type_of(row["replacement"]) == kind
                              and lex.lemma(row["replacement"]) != lex.lemma(row["corrupted_word"]),
            "site_ok": site == (row["corrupt_segment"], row["corrupt_char"], row["corrupted_word"]),
        }
    return _run(subtasks, SUBTASK_COLUMNS, SUBTASK_CHECKS, check)


def onehop_answer(text: Any, lex: Lexicon) -> tuple[str, str, str, tuple[Fact, ...]]:
    """(entity, its class, the answer, facts) of a one-hop line "E is C. N is q. C is p. E is": the
    property the entity has; with none (a corrupted rule or class), its class, as the authors label."""
    match = ONEHOP_LINE.fullmatch(text) if isinstance(text, str) else None
    if not match or lex.type_of(match[2]) != ENTITY:
        raise CheckError(f"not a one-hop line 'facts E is': {text!r}")
    facts, entity = parse_facts(match[1], lex), match[2]
    classes = [f.object for f in facts if f.subject == entity]
    if len(classes) != 1:
        raise CheckError(f"expected one class of {entity}, found {len(classes)}")
    reached = reachable(entity, facts)
    props = sorted(w for w in reached if lex.type_of(w) == PROPERTY)
    if len(props) > 1:
        raise CheckError(f"{entity} has several properties {props}")
    return entity, classes[0], (props or classes)[0], facts


def _onehop_role(facts: tuple[Fact, ...], entity: str, concept: str, offset: int) -> str | None:
    """Which corruption a change at ``offset`` is: the class (the entity fact's object), the rule
    (the subject of the class's property fact) or the property (its object)."""
    for fact in facts:
        if fact.subject == entity and offset == fact.object_at:
            return "class"
        if fact.subject == concept and fact.kind == PROPERTY and offset in (fact.at, fact.object_at):
            return "rule" if offset == fact.at else "property"
    return None


ONEHOP_COLUMNS = ("entity", "concept", "property", "text", "target", "corruption", "corrupted_text",
                  "corrupted_target")


def check_onehop(onehop: pd.DataFrame, lex: Lexicon) -> pd.DataFrame:
    """The one-hop lines: the target re-derived, and each corruption one word of its kind's type at
    its kind's place, asking for the answer the corrupted line gives."""
    def check(row: dict) -> dict[str, Any]:
        entity, concept, answer, facts = onehop_answer(row["text"], lex)
        changes = changed_words(row["text"], row["corrupted_text"]) or []
        want = CONCEPT if row["corruption"] in ("class", "rule") else PROPERTY
        one = len(changes) == 1
        try:
            corrupted = onehop_answer(row["corrupted_text"], lex)[2]
        except CheckError:
            corrupted = None
        return {
            "target_ok": (row["target"], row["entity"], row["concept"], row["property"])
                         == (answer, entity, concept, answer),
            "one_word_ok": one,
            "corruption_ok": one and _onehop_role(facts, entity, concept, changes[0][0]) == row["corruption"]
                             and lex.type_of(changes[0][2]) == want
                             and lex.lemma(changes[0][2]) != lex.lemma(changes[0][1]),
            "corrupted_target_ok": corrupted is not None and row["corrupted_target"] == corrupted,
        }
    return _run(onehop, ONEHOP_COLUMNS, ONEHOP_CHECKS, check)


def check_tables(frames: Mapping[str, pd.DataFrame], vocab: Vocabulary) -> dict[str, pd.DataFrame]:
    """The check columns of each table present, aligned to its rows; every boolean is True on
    sound data."""
    lex = Lexicon(vocab)
    empty = pd.DataFrame()
    out = {}
    if "items" in frames:
        out["items"] = check_items(frames["items"], lex, frames.get("subtasks"))
    if "shots" in frames:
        out["shots"] = check_shots(frames["shots"], lex)
    if "subtasks" in frames:
        out["subtasks"] = check_subtasks(frames["subtasks"], frames.get("items", empty), lex)
    if "onehop" in frames:
        out["onehop"] = check_onehop(frames["onehop"], lex)
    return out
