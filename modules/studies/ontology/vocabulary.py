"""The curated word lists of study 2: PrOntoQA's fictional concepts, its 45 property adjectives in
13 families, the entity names, the nonce words of the few-shot distractors, and the real category
words of the false-ontology control set (with their plurals).

The canonical lists are written here once (PrOntoQA-OOD's default vocabulary, as the paper used it)
and frozen into ``data/ontology_vocabulary.yaml`` (data.dvc), which the pipeline reads: a team
curates that file and shares it through DVC. :func:`load_vocabulary` checks it, so a malformed or
hand-edited file fails with one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from modules.core.io import atomic_write_text, read_yaml_mapping

CONCEPTS = ("wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus",
            "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus")
PROPERTIES = {  # PrOntoQA-OOD's families; the four colours are reconstructed from the count (45)
    "colour": ("blue", "red", "brown", "orange"), "size": ("small", "large"),
    "material": ("metallic", "wooden", "luminous", "liquid"), "transparency": ("transparent", "opaque"),
    "mood": ("nervous", "happy", "feisty", "shy"), "brightness": ("bright", "dull"),
    "taste": ("sweet", "sour", "spicy", "bitter"), "smell": ("floral", "fruity", "earthy"),
    "temperature": ("hot", "cold", "temperate"), "temperament": ("kind", "mean", "angry", "amenable", "aggressive"),
    "sound": ("melodic", "muffled", "discordant", "loud"), "speed": ("slow", "moderate", "fast"),
    "weather": ("windy", "sunny", "overcast", "rainy", "snowy"),
}
ENTITIES = ("Fae", "Rex", "Sally", "Max", "Alex", "Sam", "Polly", "Stella", "Wren")
NONCE = ("twimpus", "shampor", "jempor", "jelgit", "dropant", "daumpin", "borpin", "folpee", "rimpee")
# PrOntoQA's false ontologies re-wire real hierarchies; its number hierarchy has two-word names
# ("real number"), which a one-word corruption cannot replace, so it is left out.
FALSE_CONCEPTS = {
    "animal": "animals", "vertebrate": "vertebrates", "mammal": "mammals", "carnivore": "carnivores",
    "feline": "felines", "cat": "cats", "dog": "dogs", "sheep": "sheep", "cow": "cows", "snake": "snakes",
    "invertebrate": "invertebrates", "arthropod": "arthropods", "insect": "insects",
    "lepidopteran": "lepidopterans", "butterfly": "butterflies", "moth": "moths", "ant": "ants",
    "spider": "spiders", "crustacean": "crustaceans",
}


class VocabularyError(ValueError):
    """The vocabulary file is missing, malformed, or asks for a word list it does not have."""


@dataclass(frozen=True)
class Vocabulary:
    concepts: tuple[str, ...]
    properties: Mapping[str, tuple[str, ...]]   # family -> adjectives
    entities: tuple[str, ...]
    nonce: tuple[str, ...]
    false_concepts: Mapping[str, str]           # singular -> plural

    def __post_init__(self):
        words = [*self.concepts, *self.adjectives, *self.entities, *self.nonce, *self.false_concepts]
        lowered = [w.lower() for w in words]
        clash = sorted({w for w in lowered if lowered.count(w) > 1})
        if clash:
            raise VocabularyError(f"ontology vocabulary: words listed twice or in two lists: {clash}")
        if len(self.concepts) < 6 or len(self.entities) < 2 or len(self.properties) < 2:
            raise VocabularyError("ontology vocabulary: need >= 6 concepts, >= 2 entities and >= 2 property families")
        bad = [w for w in words + list(self.false_concepts.values()) if not w.isalpha()]
        if bad:
            raise VocabularyError(f"ontology vocabulary: words must be single alphabetic words, got {bad[:5]}")

    @property
    def adjectives(self) -> tuple[str, ...]:
        return tuple(a for family in self.properties.values() for a in family)

    def family_of(self, adjective: str) -> str:
        for family, words in self.properties.items():
            if adjective in words:
                return family
        raise VocabularyError(f"unknown property {adjective!r}")

    def families(self, names) -> tuple[str, ...]:
        """Check a selection of property families by name."""
        unknown = [n for n in names if n not in self.properties]
        if unknown:
            raise VocabularyError(f"unknown property family {unknown[0]!r}; families are {', '.join(self.properties)}")
        return tuple(names)

    def plural(self, concept: str) -> str:
        if concept in self.false_concepts:
            return self.false_concepts[concept]
        return concept + "es" if concept.endswith("us") else concept + "s"

    def as_dict(self) -> dict:
        return {"concepts": list(self.concepts), "properties": {k: list(v) for k, v in self.properties.items()},
                "entities": list(self.entities), "nonce": list(self.nonce),
                "false_concepts": dict(self.false_concepts)}


CANONICAL = Vocabulary(CONCEPTS, PROPERTIES, ENTITIES, NONCE, FALSE_CONCEPTS)
KEYS = ("concepts", "properties", "entities", "nonce", "false_concepts")


def write_vocabulary(path: Path, vocabulary: Vocabulary = CANONICAL) -> Path:
    text = ("# Study 2's curated vocabulary (modules/studies/ontology/vocabulary.py); versioned by data.dvc.\n"
            + yaml.safe_dump(vocabulary.as_dict(), sort_keys=False, allow_unicode=True))
    atomic_write_text(Path(path), text)
    return Path(path)


def load_vocabulary(path: Path) -> Vocabulary:
    path = Path(path)
    raw = read_yaml_mapping(path, KEYS, VocabularyError,
                            f"ontology vocabulary at {path}; run `dvc pull data.dvc` (or `make setup`)")
    lists = {k: raw[k] for k in ("concepts", "entities", "nonce")}
    if any(not isinstance(v, list) or not all(isinstance(w, str) for w in v) for v in lists.values()) or \
            not isinstance(raw["properties"], dict) or not isinstance(raw["false_concepts"], dict):
        raise VocabularyError(f"{path}: concepts, entities and nonce are word lists; properties and "
                              "false_concepts are mappings")
    return Vocabulary(tuple(raw["concepts"]), {str(k): tuple(v) for k, v in raw["properties"].items()},
                      tuple(raw["entities"]), tuple(raw["nonce"]), dict(raw["false_concepts"]))
