"""The fictional knowledge graph on which study 3's small model is trained from scratch: typed
entities with invented two-word names, functional relations, atomic facts and two-hop queries,
split the way Grokked Transformers (Wang et al. 2024) split them, phrased the way Biran et al. (2024)
phrase theirs.

    atomic fact:   "the spouse of Zorvin Takal is"                      -> "Mera Quill"
    two-hop query: "the spouse of the performer of Zorvin Takal is"     -> e3's name

Names are a first piece and a last piece; every last piece (and first piece) is shared by several
entities, so neither token alone identifies an entity and the model must combine both ("the last
token of e1" is then a meaningful position). Some entities have an alias: their facts are also
trained with the alias as subject; answers always give the primary name.

Splits (Grokked's, in the paper's phrasing): a share ``ood_fraction`` of the atomic facts is OOD:
trained as atomic facts, never inside a training two-hop query. Training has phi x |ID atomic
facts| two-hop queries drawn among the paths whose two facts are both ID (capped by what exists
once the test queries are held out). ``test_id``: held-out queries whose two facts each appear in
some training two-hop query (either hop; checked, not assumed). ``test_ood``: queries whose two
facts are both OOD. Paths whose answer is e1 itself are never used (the answer would be a copy).

The CPU-sized default (:class:`GraphConfig`): 400 entities of four types, 10 relations, phi 3.0:
1,480 atomic facts (222 OOD), 3,774 training two-hop queries, 100 test_id and 100 test_ood, 5,824
training sequences. phi cannot exceed the mean degree of a bridge entity (here about 4.3; Grokked's
is 20): beyond it the training queries are capped by the ID paths that exist.

A GPU-sized, Grokked-scale setting (2,000 entities over all five types, all 14 relations):
``GraphConfig(entities=2000, relations=tuple(RELATIONS), ood_fraction=0.1, phi=3.0, test_size=2000)``
gives 7,500 atomic facts, 20,250 training two-hop queries, 2,000 test_id but only 274 test_ood
(both-OOD paths are rare at degree <= 5), 30,695 training sequences.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modules.core.io import atomic_file, read_parquet_tables
from modules.core.params import param

ENTITY_TYPES = ("person", "city", "country", "work", "company")
ANY_TYPE = "any"                 # the identity relation's subject and object type
COPULA = "is"                    # every prompt ends with it; the answer follows
SPLITS = ("train", "test_id", "test_ood")
TEMPLATE_WORD = re.compile(r"^[a-z]+$")


class GraphError(ValueError):
    """Graph settings that cannot give the asked-for data; the message is one line."""


@dataclass(frozen=True)
class Relation:
    name: str
    template: str | None        # lowercase words around one "{}": the subject's place
    subject_type: str
    object_type: str

    def phrase(self, subject: str) -> str:
        return self.template.format(subject)

    def prompt(self, subject: str) -> str:
        return f"{self.phrase(subject)} {COPULA}"

    def words(self) -> list[str]:
        return [w for w in self.template.split() if w != "{}"]


def _relations(*rows: tuple[str, str, str, str]) -> dict[str, Relation]:
    return {name: Relation(name, template, subject, obj) for name, template, subject, obj in rows}


# Every relation is functional: one object per subject, so every query has one answer.
RELATIONS: dict[str, Relation] = _relations(
    ("spouse", "the spouse of {}", "person", "person"),
    ("mother", "the mother of {}", "person", "person"),
    ("mentor", "the mentor of {}", "person", "person"),
    ("birthplace", "the birthplace of {}", "person", "city"),
    ("employer", "the employer of {}", "person", "company"),
    ("performer", "the performer of {}", "work", "person"),
    ("author", "the author of {}", "work", "person"),
    ("publisher", "the publisher of {}", "work", "company"),
    ("founder", "the founder of {}", "company", "person"),
    ("headquarters", "the headquarters of {}", "company", "city"),
    ("country", "the country of {}", "city", "country"),
    ("mayor", "the mayor of {}", "city", "person"),
    ("capital", "the capital of {}", "country", "city"),
    ("leader", "the leader of {}", "country", "person"),
)
# Every entity -> itself: trained so that the Patchscope target "the name of <x> is" means something.
IDENTITY = Relation("name", "the name of {}", ANY_TYPE, ANY_TYPE)
DEFAULT_RELATIONS = ("spouse", "mother", "mentor", "birthplace", "employer", "performer", "author",
                     "founder", "headquarters", "mayor")
DEFAULT_ENTITIES = {"person": 240, "city": 40, "work": 80, "company": 40}
TYPE_WEIGHTS = {"person": 20, "city": 5, "country": 1, "work": 10, "company": 4}  # an `entities` total's split

# Name pieces: syllable pools, first and last pieces from disjoint heads, so a piece's position is
# its own. About NAMES_PER_LAST_PIECE names share a last piece, NAMES_PER_FIRST_PIECE a first one.
FIRST_HEADS = ("Zor", "Mer", "Tal", "Quo", "Bel", "Dra", "Fen", "Gal", "Hov", "Ira", "Jas", "Kel",
               "Lum", "Nor", "Ori", "Pax", "Ryn", "Sel", "Tov", "Ulm", "Vex", "Wyl", "Yar", "Zef")
FIRST_TAILS = ("vin", "a", "ek", "is", "on", "ith", "ar", "el", "um", "ia", "os", "en", "ir", "ax", "ul", "ette")
LAST_HEADS = ("Tak", "Quil", "Brom", "Crest", "Dun", "Far", "Gorm", "Hask", "Lorn", "Mav", "Pell", "Rask",
              "Stav", "Thorn", "Vant", "Wex", "Yost", "Zell", "Kov", "Nym")
LAST_TAILS = ("al", "wick", "more", "by", "ton", "ley", "ford", "ham", "sen", "rick", "dale", "mont", "holt",
              "wyn", "mar", "ard")
FIRST_PIECES = tuple(sorted({h + t for h in FIRST_HEADS for t in FIRST_TAILS}))
LAST_PIECES = tuple(sorted({h + t for h in LAST_HEADS for t in LAST_TAILS} - set(FIRST_PIECES)))
NAMES_PER_LAST_PIECE = 8
NAMES_PER_FIRST_PIECE = 4


def rng(seed: int, stream: str) -> random.Random:
    # str seeds are hashed with SHA-512: stable across processes and platforms.
    return random.Random(f"hopping-graph/{seed}/{stream}")


def resolve_relations(names: Sequence[str], table: Mapping[str, Relation] = RELATIONS) -> list[Relation]:
    """The named relations of ``table``, in the given order; one-line errors for an unknown name, a
    repeated one, the identity relation (set by ``identity_relation``) or a missing template."""
    if isinstance(names, str) or not names:
        raise GraphError(f"relations must be a non-empty list of names, got {names!r}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if list(names).count(n) > 1})
        raise GraphError(f"relations listed more than once: {twice}")
    out = []
    for name in names:
        if name == IDENTITY.name:
            raise GraphError(f"relation {name!r} is the identity relation; set identity_relation instead")
        if name not in table:
            raise GraphError(f"unknown relation {name!r}; known: {', '.join(table)}")
        out.append(check_relation(table[name]))
    return out


def check_relation(relation: Relation) -> Relation:
    template = relation.template
    if not isinstance(template, str) or not template.strip():
        raise GraphError(f"relation {relation.name!r} has no template (lowercase words around one '{{}}')")
    words = template.split()
    others = [w for w in words if w != "{}"]
    if words.count("{}") != 1 or template.count("{") != 1 or not all(TEMPLATE_WORD.match(w) for w in others):
        raise GraphError(f"relation {relation.name!r}: template {template!r} must be lowercase words around one '{{}}'")
    for kind in (relation.subject_type, relation.object_type):
        if kind not in ENTITY_TYPES:
            raise GraphError(f"relation {relation.name!r}: unknown entity type {kind!r}; "
                             f"known: {', '.join(ENTITY_TYPES)}")
    return relation


def split_entities(total: int, relations: Sequence[Relation]) -> dict[str, int]:
    """``total`` entities over the types the relations use, in TYPE_WEIGHTS' proportions (largest
    remainder, so the counts add up exactly)."""
    used = [t for t in ENTITY_TYPES if any(t in (r.subject_type, r.object_type) for r in relations)]
    weight = sum(TYPE_WEIGHTS[t] for t in used)
    exact = {t: total * TYPE_WEIGHTS[t] / weight for t in used}
    counts = {t: math.floor(v) for t, v in exact.items()}
    for t in sorted(used, key=lambda t: (counts[t] - exact[t], used.index(t)))[:total - sum(counts.values())]:
        counts[t] += 1
    return counts


@dataclass(frozen=True)
class GraphConfig:
    seed: int = param(0, range=(0, 2**63 - 1))
    entities: int | dict[str, int] = param(factory=lambda: dict(DEFAULT_ENTITIES))  # per type, or a total
    alias_share: float = param(0.1, range=(0.0, 1.0))       # entities with one alias
    ood_fraction: float = param(0.15, range=(0.0, 0.9))     # atomic facts never inside a training two-hop
    phi: float = param(3.0, range=(1e-6, 1e4))              # training two-hop queries per ID atomic fact
    test_size: int = param(100, range=(1, 10**7))           # per held-out split (capped by what exists)
    identity_relation: bool = param(True)                   # "the name of X is X" facts
    relations: tuple[str, ...] = param(DEFAULT_RELATIONS)   # names in RELATIONS

    def __post_init__(self):
        relations = resolve_relations(self.relations)
        counts = self.entity_counts()
        for relation in relations:
            need = 2 if relation.subject_type == relation.object_type else 1
            for kind in (relation.subject_type, relation.object_type):
                if counts.get(kind, 0) < need:
                    raise GraphError(f"relation {relation.name!r} needs at least {need} {kind} entities, "
                                     f"got {counts.get(kind, 0)}")

    def entity_counts(self) -> dict[str, int]:
        """Entities per type, in ENTITY_TYPES order."""
        if isinstance(self.entities, bool):
            raise GraphError(f"entities must be a count or a mapping of type to count, got {self.entities!r}")
        if isinstance(self.entities, int):
            if self.entities < 2:
                raise GraphError(f"entities must be at least 2, got {self.entities}")
            return split_entities(self.entities, resolve_relations(self.relations))
        if not isinstance(self.entities, Mapping):
            raise GraphError(f"entities must be a count or a mapping of type to count, got {self.entities!r}")
        unknown = sorted(set(self.entities) - set(ENTITY_TYPES))
        if unknown:
            raise GraphError(f"unknown entity type(s) {unknown}; known: {', '.join(ENTITY_TYPES)}")
        bad = {t: n for t, n in self.entities.items() if isinstance(n, bool) or not isinstance(n, int) or n < 0}
        if bad:
            raise GraphError(f"entity counts must be non-negative ints, got {bad}")
        return {t: self.entities[t] for t in ENTITY_TYPES if self.entities.get(t)}

    def relation_list(self) -> list[Relation]:
        return resolve_relations(self.relations)


# ---------------------------------------------------------------- tables

ENTITY_SCHEMA = pa.schema([("entity_id", pa.string()), ("type", pa.string()), ("name", pa.string()),
                           ("alias", pa.string())])
RELATION_SCHEMA = pa.schema([("relation", pa.string()), ("template", pa.string()), ("subject_type", pa.string()),
                             ("object_type", pa.string())])
FACT_SCHEMA = pa.schema([("subject_id", pa.string()), ("relation", pa.string()), ("object_id", pa.string()),
                         ("subject_text", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
                         ("ood", pa.bool_())])
TWOHOP_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("e1_id", pa.string()), ("r1", pa.string()), ("e2_id", pa.string()),
    ("r2", pa.string()), ("e3_id", pa.string()), ("e1_name", pa.string()), ("e2_name", pa.string()),
    ("e3_name", pa.string()), ("prompt", pa.string()), ("first_hop_prompt", pa.string()),
    ("second_hop_prompt", pa.string()), ("t1_text", pa.string()), ("split", pa.string()),
])
SCHEMAS = {"entities": ENTITY_SCHEMA, "relations": RELATION_SCHEMA, "facts": FACT_SCHEMA, "twohop": TWOHOP_SCHEMA}


def name_pool(n: int, seed: int) -> list[str]:
    """``n`` distinct two-piece names in a seeded order. Names are dealt round-robin over the last
    pieces, so each is shared by about NAMES_PER_LAST_PIECE names, and draw distinct first pieces
    within a last piece."""
    n_last = min(len(LAST_PIECES), max(2, math.ceil(n / NAMES_PER_LAST_PIECE)))
    n_first = min(len(FIRST_PIECES), max(2, math.ceil(n / NAMES_PER_FIRST_PIECE), math.ceil(2 * n / n_last)))
    if math.ceil(n / n_last) > n_first:
        raise GraphError(f"{n} names exceed the syllable pools ({len(FIRST_PIECES)} x {len(LAST_PIECES)} pieces)")
    r = rng(seed, "names")
    firsts, lasts = r.sample(FIRST_PIECES, n_first), r.sample(LAST_PIECES, n_last)
    per_last = math.ceil(n / n_last)
    orders = [r.sample(firsts, per_last) for _ in lasts]
    names = [f"{orders[i % n_last][i // n_last]} {lasts[i % n_last]}" for i in range(n)]
    r.shuffle(names)
    return names


def _check_pieces(relations: Sequence[Relation]) -> None:
    reserved = {w.lower() for r in relations for w in r.words()} | {COPULA}
    clash = sorted(p for p in (*FIRST_PIECES, *LAST_PIECES) if p.lower() in reserved)
    if clash:
        raise GraphError(f"name pieces {clash} equal template words")


def make_entities(config: GraphConfig) -> pd.DataFrame:
    counts = config.entity_counts()
    ids = [(kind, f"{kind}-{i:04d}") for kind, n in counts.items() for i in range(n)]
    aliased = set(rng(config.seed, "aliases").sample(range(len(ids)), round(config.alias_share * len(ids))))
    names = name_pool(len(ids) + len(aliased), config.seed)
    aliases = iter(names[len(ids):])
    rows = [{"entity_id": entity_id, "type": kind, "name": names[i], "alias": next(aliases) if i in aliased else ""}
            for i, (kind, entity_id) in enumerate(ids)]
    return pd.DataFrame(rows, columns=ENTITY_SCHEMA.names)


def relations_table(relations: Sequence[Relation], identity_relation: bool) -> pd.DataFrame:
    rows = [*relations, *([IDENTITY] if identity_relation else [])]
    return pd.DataFrame([(r.name, r.template, r.subject_type, r.object_type) for r in rows],
                        columns=RELATION_SCHEMA.names)


def draw_objects(config: GraphConfig, entities: pd.DataFrame, relations: Sequence[Relation]) -> dict[tuple, str]:
    """(subject_id, relation) -> object_id: one uniform object of the relation's type, never the
    subject itself; one seeded stream per relation, so adding a relation leaves the others alone."""
    by_type = entities.groupby("type")["entity_id"].apply(list).to_dict()
    objects = {}
    for relation in relations:
        r = rng(config.seed, f"facts/{relation.name}")
        for subject in by_type[relation.subject_type]:
            objects[(subject, relation.name)] = r.choice([o for o in by_type[relation.object_type] if o != subject])
    return objects


def make_facts(config: GraphConfig, entities: pd.DataFrame, relations: Sequence[Relation],
               objects: Mapping[tuple, str]) -> pd.DataFrame:
    """Per entity: its facts (relation order), then its identity fact, then the same with its
    alias as subject. OOD is drawn over the primary, non-identity facts; alias copies follow."""
    keys = list(objects)  # entity order within relation order; re-sorted per entity below
    ood = set(rng(config.seed, "ood").sample(keys, round(config.ood_fraction * len(keys))))
    name = dict(zip(entities["entity_id"], entities["name"]))
    own = {t: [r for r in relations if r.subject_type == t] for t in ENTITY_TYPES}
    rows = []
    for entity_id, kind, primary, alias in entities.itertuples(index=False):
        for subject_text in (primary, alias) if alias else (primary,):
            for relation in own[kind]:
                obj = objects[(entity_id, relation.name)]
                rows.append((entity_id, relation.name, obj, subject_text, relation.prompt(subject_text), name[obj],
                             (entity_id, relation.name) in ood))
            if config.identity_relation:
                rows.append((entity_id, IDENTITY.name, entity_id, subject_text, IDENTITY.prompt(subject_text),
                             primary, False))
    return pd.DataFrame(rows, columns=FACT_SCHEMA.names)


def two_hop_paths(entities: pd.DataFrame, relations: Sequence[Relation], objects: Mapping[tuple, str]) -> list[tuple]:
    """Every (e1, r1, e2, r2, e3) with e3 != e1, in fact order."""
    kind = dict(zip(entities["entity_id"], entities["type"]))
    own = {t: [r for r in relations if r.subject_type == t] for t in ENTITY_TYPES}
    paths = []
    for (e1, r1), e2 in objects.items():
        for relation in own[kind[e2]]:
            e3 = objects[(e2, relation.name)]
            if e3 != e1:
                paths.append((e1, r1, e2, relation.name, e3))
    return paths


def split_paths(config: GraphConfig, paths: list[tuple], ood: set[tuple], n_id_facts: int) -> dict[str, list]:
    """Grokked's split. Up to 2 x test_size ID paths are held out as test_id candidates; training
    draws phi x |ID facts| from the rest; a candidate joins test_id only if both its facts occur in
    some training query, and unused candidates top training up (coverage only grows)."""
    def facts(p):
        return (p[0], p[1]), (p[2], p[3])
    id_paths = [p for p in paths if not set(facts(p)) & ood]
    ood_paths = [p for p in paths if set(facts(p)) <= ood]
    r = rng(config.seed, "twohop")
    r.shuffle(id_paths)
    r.shuffle(ood_paths)
    reserve = min(2 * config.test_size, len(id_paths) // 2)
    candidates, rest = id_paths[:reserve], id_paths[reserve:]
    target = round(config.phi * n_id_facts)
    train = rest[:target]
    seen = {f for p in train for f in facts(p)}
    test_id = [p for p in candidates if set(facts(p)) <= seen][:config.test_size]
    held = set(test_id)
    train += [p for p in candidates if p not in held][:max(0, target - len(train))]
    return {"train": train, "test_id": test_id, "test_ood": ood_paths[:config.test_size]}


def twohop_rows(split: str, paths: list[tuple], name: Mapping[str, str], table: Mapping[str, Relation]) -> list[dict]:
    rows = []
    for i, (e1, r1, e2, r2, e3) in enumerate(paths):
        first, second = table[r1], table[r2]
        t1_text = first.phrase(name[e1])
        rows.append({"query_id": f"{split}-{i:05d}", "e1_id": e1, "r1": r1, "e2_id": e2, "r2": r2, "e3_id": e3,
                     "e1_name": name[e1], "e2_name": name[e2], "e3_name": name[e3],
                     "prompt": second.prompt(t1_text), "first_hop_prompt": first.prompt(name[e1]),
                     "second_hop_prompt": second.prompt(name[e2]), "t1_text": t1_text, "split": split})
    return rows


def generate_graph(config: GraphConfig) -> dict[str, pd.DataFrame]:
    """The four tables (entities, relations, facts, twohop), deterministic by ``config.seed``."""
    relations = config.relation_list()
    _check_pieces([*relations, IDENTITY])
    entities = make_entities(config)
    objects = draw_objects(config, entities, relations)
    facts = make_facts(config, entities, relations, objects)
    name = dict(zip(entities["entity_id"], entities["name"]))
    primary = facts[(facts["subject_text"] == facts["subject_id"].map(name)) & (facts["relation"] != IDENTITY.name)]
    ood = set(zip(primary.loc[primary["ood"], "subject_id"], primary.loc[primary["ood"], "relation"]))
    splits = split_paths(config, two_hop_paths(entities, relations, objects), ood, int((~primary["ood"]).sum()))
    table = {r.name: r for r in relations}
    rows = [row for split in SPLITS for row in twohop_rows(split, splits[split], name, table)]
    return {"entities": entities, "relations": relations_table(relations, config.identity_relation),
            "facts": facts, "twohop": pd.DataFrame(rows, columns=TWOHOP_SCHEMA.names)}


def training_texts(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """"prompt answer" for every atomic fact (alias and identity facts included), then every
    training two-hop query; the model's loss falls on the answer tokens and <eos>."""
    facts, twohop = tables["facts"], tables["twohop"]
    train = twohop[twohop["split"] == "train"]
    return ([f"{p} {a}" for p, a in zip(facts["prompt"], facts["answer"])]
            + [f"{p} {a}" for p, a in zip(train["prompt"], train["e3_name"])])


def graph_statistics(tables: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Counts to report: entities per type, aliases, facts (primary, OOD), two-hop per split."""
    entities, facts, twohop = tables["entities"], tables["facts"], tables["twohop"]
    name = dict(zip(entities["entity_id"], entities["name"]))
    atomic = facts[(facts["relation"] != IDENTITY.name) & (facts["subject_text"] == facts["subject_id"].map(name))]
    return {**{f"entities_{t}": int(n) for t, n in entities["type"].value_counts().sort_index().items()},
            "entities": len(entities), "aliases": int((entities["alias"] != "").sum()),
            "relations": int((tables["relations"]["relation"] != IDENTITY.name).sum()),
            "atomic_facts": len(atomic), "atomic_ood": int(atomic["ood"].sum()), "fact_rows": len(facts),
            **{f"twohop_{s}": int((twohop["split"] == s).sum()) for s in SPLITS},
            "training_texts": len(facts) + int((twohop["split"] == "train").sum())}


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    for name, frame in tables.items():
        with atomic_file(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False), tmp)


def read_tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    return read_parquet_tables(data_dir, SCHEMAS, "run the generate_hopping stage first")
