"""The study-2 tables, deterministic by seed, and their Parquet files (docs/ontology/data.md).

* ``items``: fictional test items (3 facts for 2 hops, no distractors, labels balanced) and the
  false-ontology control items ("Cats are cows."), one row each;
* ``shots``: the solved few-shot examples of each ontology (5 shuffled facts: the proof path plus
  2 distractors; half True), in prompt order;
* ``subtasks``: one row per item and chain-of-thought word: the gold prefix, the target, where its
  source is, and the corrupted input and prefix (the subtask-7-style copy of the property has a
  second row, ``variant="fact"``, that corrupts the fact instead of the query);
* ``onehop``: the one-hop task "Alex is sterpus. Sterpus is bitter. Alex is" -> "bitter" with its
  three corruptions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modules.core.io import atomic_file, read_parquet_tables
from modules.studies.ontology.data.generator import (Item, GeneratorError, block, check_hops, corruption_site, forms,
                                                     render, replacements, rng, sample_item, source_site, splice,
                                                     subtasks)
from modules.studies.ontology.vocabulary import Vocabulary

ITEM_SCHEMA = pa.schema([
    ("id", pa.string()), ("ontology", pa.string()), ("hops", pa.int64()), ("entity", pa.string()),
    ("chain", pa.string()), ("property", pa.string()), ("family", pa.string()), ("query_property", pa.string()),
    ("label", pa.bool_()), ("question", pa.string()), ("query", pa.string()), ("cot", pa.string()),
    ("answer", pa.string()), ("input", pa.string()),
])
SHOT_SCHEMA = pa.schema([
    ("id", pa.string()), ("ontology", pa.string()), ("order", pa.int64()), ("hops", pa.int64()),
    ("entity", pa.string()), ("chain", pa.string()), ("property", pa.string()), ("label", pa.bool_()),
    ("question", pa.string()), ("query", pa.string()), ("cot", pa.string()), ("answer", pa.string()),
    ("input", pa.string()), ("block", pa.string()),
])
SUBTASK_SCHEMA = pa.schema([
    ("id", pa.string()), ("item_id", pa.string()), ("ontology", pa.string()), ("subtask", pa.int64()),
    ("kind", pa.string()), ("variant", pa.string()), ("target", pa.string()), ("target_type", pa.string()),
    ("prefix", pa.string()), ("source_char", pa.int64()), ("corrupt_segment", pa.string()),
    ("corrupt_char", pa.int64()), ("corrupted_word", pa.string()), ("replacement", pa.string()),
    ("corrupted_input", pa.string()), ("corrupted_prefix", pa.string()), ("alternatives", pa.string()),
])
ONEHOP_SCHEMA = pa.schema([
    ("id", pa.string()), ("entity", pa.string()), ("concept", pa.string()), ("property", pa.string()),
    ("text", pa.string()), ("target", pa.string()), ("corruption", pa.string()),
    ("corrupted_text", pa.string()), ("corrupted_target", pa.string()),
])
SCHEMAS = {"items": ITEM_SCHEMA, "shots": SHOT_SCHEMA, "subtasks": SUBTASK_SCHEMA, "onehop": ONEHOP_SCHEMA}
ONEHOP_CORRUPTIONS = ("class", "rule", "property")


@dataclass(frozen=True)
class DataConfig:
    seed: int
    hops: int
    items: int            # fictional test items
    false_items: int      # false-ontology items (the sufficiency test's mean activations)
    shots: int            # solved examples per ontology
    onehop: int           # one-hop items (each with three corruptions)
    onehop_shots: int

    def __post_init__(self):
        check_hops(self.hops)
        if self.shots % 2:
            raise GeneratorError(f"shots must be even (half True, half False), got {self.shots}")


def _key(item: Item) -> tuple:
    return item.entity, item.chain, item.property


def sample_shots(config: DataConfig, vocab: Vocabulary, ontology: str) -> list[Item]:
    """Solved examples in prompt order, alternating True/False from a per-ontology stream."""
    r = rng(config.seed, f"shots/{ontology}")
    return [sample_item(r, vocab, config.hops, label=i % 2 == 0, ontology=ontology, distractors=2)
            for i in range(config.shots)]


def sample_items(config: DataConfig, vocab: Vocabulary, ontology: str, n: int, exclude: set) -> list[Item]:
    """``n`` distinct items, half True, none with a shot's proof path."""
    r, seen, items = rng(config.seed, f"items/{ontology}"), set(exclude), []
    tries = 0
    while len(items) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise GeneratorError(f"cannot draw {n} distinct {ontology} items from the vocabulary")
        item = sample_item(r, vocab, config.hops, label=len(items) % 2 == 0, ontology=ontology)
        if _key(item) in seen:
            continue
        seen.add(_key(item))
        items.append(item)
    r.shuffle(items)
    return items


def item_row(item: Item, item_id: str, vocab: Vocabulary) -> dict:
    texts = render(item, vocab)
    return {"id": item_id, "ontology": item.ontology, "hops": len(item.chain), "entity": item.entity,
            "chain": ",".join(item.chain), "property": item.property, "family": vocab.family_of(item.property),
            "query_property": item.query_property, "label": item.label, **texts}


def subtask_rows(item: Item, item_id: str, vocab: Vocabulary, seed: int) -> list[dict]:
    texts = render(item, vocab)
    rows = []
    for task in subtasks(item, vocab):
        also = forms(task.target, vocab)
        variants = ["paper"]
        if task.kind == "copy" and task.target_type == "property":
            variants.append("fact")   # the paper's rule corrupts the query here; this one the fact
        for variant in variants:
            segment, offset, word = corruption_site(texts["input"], task.prefix, task.target, variant,
                                                    also=also)
            r = rng(seed, f"corrupt/{item_id}/{task.index}/{variant}")
            new, *alternatives = replacements(r, word, task.target_type, item, vocab)
            text = task.prefix if segment == "cot" else texts["input"]
            corrupted = splice(text, offset, word, new)
            rows.append({
                "id": f"{item_id}/s{task.index}/{variant}", "item_id": item_id, "ontology": item.ontology,
                "subtask": task.index, "kind": task.kind, "variant": variant, "target": task.target,
                "target_type": task.target_type, "prefix": task.prefix,
                "source_char": source_site(texts["input"], task.target, also), "corrupt_segment": segment,
                "corrupt_char": offset, "corrupted_word": word, "replacement": new,
                "corrupted_input": corrupted if segment == "input" else texts["input"],
                "corrupted_prefix": corrupted if segment == "cot" else task.prefix,
                "alternatives": " ".join(alternatives)})
    return rows


def onehop_rows(config: DataConfig, vocab: Vocabulary) -> tuple[list[dict], list[str]]:
    """The one-hop test lines with their corruptions, and the solved lines of the prompt.
    A line holds the entity fact, a distractor (a nonce concept's property) and the rule."""
    r = rng(config.seed, "onehop")

    def line(entity, concept, prop, nonce, distractor_prop):
        facts = [f"{entity} is {concept}.", f"{nonce.capitalize()} is {distractor_prop}.",
                 f"{concept.capitalize()} is {prop}."]
        return " ".join(facts) + f" {entity} is"

    def draw():
        entity, (concept, nonce) = r.choice(vocab.entities), r.sample(vocab.concepts, 2)
        prop, other = r.sample(vocab.adjectives, 2)
        return entity, concept, prop, nonce, other

    shots = []
    for _ in range(config.onehop_shots):
        entity, concept, prop, nonce, other = draw()
        shots.append(f"{line(entity, concept, prop, nonce, other)} {prop}")
    rows, seen = [], {tuple(s.split()[:3]) for s in shots}
    free = len(vocab.entities) * len(vocab.concepts) - len(seen)  # an item's (entity, concept) is new
    if config.onehop > free:
        raise GeneratorError(f"onehop: at most {free} items have an (entity, concept) pair of their own "
                             f"with this vocabulary and {config.onehop_shots} shots, got {config.onehop}")
    while len(rows) < 3 * config.onehop:
        entity, concept, prop, nonce, other = draw()
        if (entity, "is", f"{concept}.") in seen:
            continue
        seen.add((entity, "is", f"{concept}."))
        item_id = f"onehop-{len(rows) // 3:05d}"
        text = line(entity, concept, prop, nonce, other)
        fresh = r.choice([c for c in vocab.concepts if c not in (concept, nonce)])
        new_prop = r.choice([a for a in vocab.adjectives if a not in (prop, other)])
        corrupted = {  # (text, the answer it now asks for), as the authors' three corruptions
            "class": (text.replace(f"{entity} is {concept}.", f"{entity} is {fresh}."), fresh),
            "rule": (text.replace(f"{concept.capitalize()} is {prop}.", f"{fresh.capitalize()} is {prop}."), concept),
            "property": (text.replace(f"{concept.capitalize()} is {prop}.", f"{concept.capitalize()} is {new_prop}."),
                         new_prop)}
        for kind in ONEHOP_CORRUPTIONS:
            rows.append({"id": f"{item_id}/{kind}", "entity": entity, "concept": concept, "property": prop,
                         "text": text, "target": prop, "corruption": kind, "corrupted_text": corrupted[kind][0],
                         "corrupted_target": corrupted[kind][1]})
    return rows, shots


def generate(config: DataConfig, vocab: Vocabulary) -> dict[str, pd.DataFrame]:
    tables: dict[str, list[dict]] = {"items": [], "shots": [], "subtasks": []}
    for ontology, n in (("fictional", config.items), ("false", config.false_items)):
        shots = sample_shots(config, vocab, ontology)
        for order, shot in enumerate(shots):
            texts = render(shot, vocab, shuffle=rng(config.seed, f"shuffle/{ontology}/{order}"))
            tables["shots"].append({"id": f"shot-{ontology}-{order}", "ontology": ontology, "order": order,
                                    "hops": config.hops, "entity": shot.entity, "chain": ",".join(shot.chain),
                                    "property": shot.property, "label": shot.label, **texts,
                                    "block": block(texts["input"], texts["answer"])})
        for i, item in enumerate(sample_items(config, vocab, ontology, n, {_key(s) for s in shots})):
            item_id = f"{ontology}-{i:05d}"
            tables["items"].append(item_row(item, item_id, vocab))
            tables["subtasks"].extend(subtask_rows(item, item_id, vocab, config.seed))
    onehop, onehop_shots = onehop_rows(config, vocab)
    frames = {name: pd.DataFrame(rows, columns=SCHEMAS[name].names) for name, rows in tables.items()}
    frames["onehop"] = pd.DataFrame(onehop, columns=ONEHOP_SCHEMA.names)
    frames["onehop"].attrs["shots"] = onehop_shots
    return frames


def write_tables(frames: dict[str, pd.DataFrame], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    for name, frame in frames.items():
        with atomic_file(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False), tmp)
    (out_dir / "onehop_shots.txt").write_text("\n".join(frames["onehop"].attrs.get("shots", [])) + "\n")


def read_tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    data_dir = Path(data_dir)
    frames = read_parquet_tables(data_dir, SCHEMAS, "run the generate_ontology stage first")
    shots = data_dir / "onehop_shots.txt"
    frames["onehop"].attrs["shots"] = shots.read_text().splitlines() if shots.is_file() else []
    return frames
