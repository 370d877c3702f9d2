"""Great Expectations suite of the fictional knowledge graph (modules/studies/hopping/data/graph.py).

The checks re-derive the graph from the Parquet tables rather than trust the generator:

* ``relations``, ``entities``, ``facts``, ``twohop``: the writer's schema, unique ids, and check
  columns: templates, each entity's complete set of facts (under its name and its alias), facts
  whose texts and answers follow from the ids, functional relations (one object per subject and
  relation), alias facts as OOD as their primary fact, every two-hop answer the composition of
  its two atomic facts, the split definitions (train and test_id: both facts ID; test_id: both
  facts inside some training query; test_ood: both facts OOD), and the OOD share;
* ``names``: every name and alias, unique, and at least ``min_name_tokens`` tokens of the graph
  tokenizer;
* ``heldout_vs_train``: no two-hop prompt twice, so no held-out prompt is trained on;
* ``splits``: each split's size against the config's (phi x |ID atomic facts| capped by the ID paths
  left once test_id is held out; test_size capped by the paths that exist), within a tolerance.

    report = validate_graph(Path("artifacts/hopping/graph"), {"phi": 3.0, "ood_fraction": 0.15,
                            "test_size": 100}, Path("reports/data_docs/hopping_graph"))
    raise_on_failure(report)   # DataValidationError with a one-line message
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from modules.core.io import write_json
from modules.core.params import load, param
from modules.studies.hopping.data.graph import (ANY_TYPE, COPULA, ENTITY_TYPES, IDENTITY, SCHEMAS, SPLITS,
                                                GraphConfig)
from modules.studies.hopping.data.tokenizer import (COPY_FORMAT, build_graph_tokenizer, graph_vocabulary,
                                                    name_token_counts, template_words)
from modules.validation import (SUMMARY_FORMAT, ValidationReport, check_docs_dir, empty_table_expectation,
                                outcomes_by_table, read_table, schema_expectations, share_bounds, validate_batches)

# The dataset contract as pandas reads the Parquet files back: the writer's schemas, not a copy.
COLUMNS: dict[str, dict[str, str]] = {
    name: {column: str(dtype) for column, dtype in schema.empty_table().to_pandas().dtypes.items()}
    for name, schema in SCHEMAS.items()}
REASON = "reason"        # a failing row's id and its failed checks, for messages
OOD_SHARE = "ood_share"  # a primary atomic fact's ood as 1.0/0.0, NaN on other rows
NAMES, HELDOUT, SPLIT_SIZES = "names", "heldout_vs_train", "splits"
CHECKS = {
    "relations": ("template_ok", "types_ok"),
    "entities": ("facts_complete",),
    "facts": ("fact_ok", "text_ok", "functional", "ood_ok"),
    "twohop": ("path_ok", "answer_ok", "text_ok", "facts_in_distribution", "facts_seen_in_train", "facts_ood"),
}
CHECK_NOTES = {
    "template_ok": "lowercase words around exactly one '{}'",
    "types_ok": "subject and object types are entity types ('any' only for the identity relation)",
    "facts_complete": "under its name and its alias, one fact per relation of its type (and the identity fact)",
    "fact_ok": "a known relation between existing entities of its types; the identity relation maps x to x",
    "text_ok": "the texts rebuilt from the templates and the entities' names",
    "functional": "one object per subject and relation, over every row",
    "ood_ok": "identity facts are ID; an alias fact is OOD iff its primary fact is",
    "path_ok": "r1's object type is r2's subject type, neither is the identity relation, e3 is not e1",
    "answer_ok": "e2 and e3 (ids and primary names) are the composition of the two atomic facts",
    "facts_in_distribution": "train and test_id queries: both atomic facts are ID",
    "facts_seen_in_train": "test_id queries: both atomic facts occur in some training two-hop query",
    "facts_ood": "test_ood queries: both atomic facts are OOD",
}
TEMPLATE = re.compile(r"^(?:[a-z]+ )*\{\}(?: [a-z]+)*$")


@dataclass(frozen=True)
class GraphValidationParams:
    phi: float = param(range=(1e-6, 1e4))                   # as GraphConfig's
    ood_fraction: float = param(range=(0.0, 0.9))
    test_size: int = param(range=(1, 10**7))
    min_name_tokens: int = param(2, range=(1, 16))
    ood_tolerance: float = param(0.01, range=(0.0, 0.5))    # absolute, on the OOD share of atomic facts
    split_tolerance: float = param(0.1, range=(1e-9, 1.0))  # relative, on each split's size

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | GraphConfig | "GraphValidationParams"
                      ) -> "GraphValidationParams":
        """From the graph's config, or {phi, ood_fraction, test_size, min_name_tokens?,
        ood_tolerance?, split_tolerance?} (the graph's settings beside params.yaml's validation)."""
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, GraphConfig):
            return cls(phi=settings.phi, ood_fraction=settings.ood_fraction, test_size=settings.test_size)
        return load(cls, dict(settings), "validation", complete=False)


class Graph:
    """Lookups over the tables as read, tolerant of broken rows (a missing key reads as None)."""

    def __init__(self, tables: Mapping[str, pd.DataFrame]):
        relations, entities, facts = (tables[n].reindex(columns=SCHEMAS[n].names)
                                      for n in ("relations", "entities", "facts"))
        self.relation = {r["relation"]: r for r in relations.to_dict("records")}
        self.kind = dict(zip(entities["entity_id"], entities["type"]))
        self.name = dict(zip(entities["entity_id"], entities["name"]))
        self.alias = {e: a for e, a in zip(entities["entity_id"], entities["alias"]) if isinstance(a, str) and a}
        self.primary = ((facts["subject_text"] == facts["subject_id"].map(self.name))
                        & (facts["relation"] != IDENTITY.name))
        atomic = facts[self.primary].drop_duplicates(["subject_id", "relation"])  # a second object: `functional`
        keys = list(zip(atomic["subject_id"], atomic["relation"]))
        self.object = dict(zip(keys, atomic["object_id"]))
        self.ood = dict(zip(keys, atomic["ood"]))

    def text(self, relation: str, subject: Any) -> str | None:
        row = self.relation.get(relation)
        if row is None or not isinstance(subject, str) or not _template_ok(row["template"]):
            return None
        return row["template"].format(subject)

    def prompt(self, relation: str, subject: Any) -> str | None:
        text = self.text(relation, subject)
        return None if text is None else f"{text} {COPULA}"

    def paths(self) -> list[tuple]:
        """Every (e1, r1, e2, r2, e3) of the atomic facts with e3 != e1."""
        out_of: dict[str, list[str]] = {}
        for subject, relation in self.object:
            out_of.setdefault(subject, []).append(relation)
        return [(e1, r1, e2, r2, self.object[(e2, r2)]) for (e1, r1), e2 in self.object.items()
                for r2 in out_of.get(e2, []) if self.object[(e2, r2)] != e1]


def _template_ok(template: Any) -> bool:
    return isinstance(template, str) and bool(TEMPLATE.match(template))


def _with_checks(frame: pd.DataFrame, key: str, rows: list[dict], names: tuple[str, ...],
                 extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """``frame`` with its boolean check columns, any ``extra`` columns, then the reason column."""
    checks = pd.DataFrame([[r.get(n) is True for n in names] for r in rows], index=frame.index,
                          columns=list(names), dtype=bool)
    reasons = [f"{k}: {', '.join(n for n in names if not ok[n])}" if not all(ok[n] for n in names) else ""
               for k, (_, ok) in zip(frame.reindex(columns=[key])[key], checks.iterrows())]
    parts = [frame, checks, *([extra] if extra is not None else []),
             pd.Series(reasons, index=frame.index, name=REASON, dtype=object)]
    return pd.concat(parts, axis=1)


def check_relations(relations: pd.DataFrame) -> pd.DataFrame:
    rel = relations.reindex(columns=SCHEMAS["relations"].names)
    rows = []
    for r in rel.to_dict("records"):
        identity = r["relation"] == IDENTITY.name
        types = (ANY_TYPE, ANY_TYPE) if identity else None
        rows.append({"template_ok": _template_ok(r["template"]),
                     "types_ok": (r["subject_type"], r["object_type"]) == types if identity
                     else r["subject_type"] in ENTITY_TYPES and r["object_type"] in ENTITY_TYPES})
    return _with_checks(relations, "relation", rows, CHECKS["relations"])


def check_entities(entities: pd.DataFrame, facts: pd.DataFrame, graph: Graph) -> pd.DataFrame:
    ent = entities.reindex(columns=SCHEMAS["entities"].names)
    fac = facts.reindex(columns=SCHEMAS["facts"].names)
    have = fac.groupby(["subject_id", "subject_text"])["relation"].apply(lambda r: sorted(set(r))).to_dict()
    identity = [IDENTITY.name] if IDENTITY.name in graph.relation else []
    rows = []
    for entity_id, kind, name, alias in ent.itertuples(index=False):
        want = sorted([r for r, row in graph.relation.items() if row["subject_type"] == kind] + identity)
        texts = [name, *([alias] if isinstance(alias, str) and alias else [])]
        rows.append({"facts_complete": all(have.get((entity_id, t)) == want for t in texts)})
    return _with_checks(entities, "entity_id", rows, CHECKS["entities"])


def names_frame(tables: Mapping[str, pd.DataFrame], min_name_tokens: int) -> pd.DataFrame:
    """One row per name and alias: its token count under the graph tokenizer, and whether any
    piece is a template word or the prompts' punctuation."""
    ent = tables["entities"].reindex(columns=SCHEMAS["entities"].names)
    rows = [(e, "name", n) for e, n in zip(ent["entity_id"], ent["name"])]
    rows += [(e, "alias", a) for e, a in zip(ent["entity_id"], ent["alias"]) if isinstance(a, str) and a]
    frame = pd.DataFrame(rows, columns=["entity_id", "kind", "text"]).astype({"text": object})
    texts = [t if isinstance(t, str) else "" for t in frame["text"]]
    relations = tables["relations"].reindex(columns=SCHEMAS["relations"].names)
    reserved = {*template_words(relations[relations["template"].map(_template_ok)]), COPULA, *COPY_FORMAT}
    try:
        tokenizer = build_graph_tokenizer(graph_vocabulary(tables), min_name_tokens=0)
        frame["tokens"] = name_token_counts(tokenizer, texts)
    except Exception:  # a vocabulary the tokenizer refuses: the pieces check says why
        frame["tokens"] = [0] * len(frame)
    frame["tokens"] = frame["tokens"].astype("int64")
    frame["pieces_ok"] = [not (set(t.split()) & reserved) for t in texts]
    return frame


def check_facts(facts: pd.DataFrame, graph: Graph) -> pd.DataFrame:
    fac = facts.reindex(columns=SCHEMAS["facts"].names)
    objects = fac.groupby(["subject_id", "relation"])["object_id"].nunique(dropna=False).to_dict()
    rows = []
    for row in fac.to_dict("records"):
        s, rel, o = row["subject_id"], row["relation"], row["object_id"]
        info = graph.relation.get(rel)
        identity = rel == IDENTITY.name
        fact_ok = info is not None and s in graph.kind and o in graph.kind and (
            o == s if identity else (graph.kind[s], graph.kind[o]) == (info["subject_type"], info["object_type"]))
        text_ok = (row["subject_text"] in (graph.name.get(s), graph.alias.get(s))
                   and row["prompt"] == graph.prompt(rel, row["subject_text"]) and row["answer"] == graph.name.get(o))
        ood = row["ood"]
        ood_ok = ood is False or ood is np.False_ if identity else (
            (s, rel) in graph.ood and bool(ood) == bool(graph.ood[(s, rel)]) and isinstance(ood, (bool, np.bool_)))
        rows.append({"fact_ok": bool(fact_ok), "text_ok": bool(text_ok),
                     "functional": objects.get((s, rel)) == 1, "ood_ok": bool(ood_ok)})
    share = fac["ood"].where(graph.primary).astype(float)
    extra = pd.DataFrame({OOD_SHARE: share}, index=facts.index)
    return _with_checks(facts, "prompt", rows, CHECKS["facts"], extra)


def check_twohop(twohop: pd.DataFrame, graph: Graph) -> pd.DataFrame:
    two = twohop.reindex(columns=SCHEMAS["twohop"].names)
    train = two[two["split"] == "train"]
    seen = set(zip(train["e1_id"], train["r1"])) | set(zip(train["e2_id"], train["r2"]))
    rows = []
    for row in two.to_dict("records"):
        e1, r1, e2, r2, e3, split = (row[k] for k in ("e1_id", "r1", "e2_id", "r2", "e3_id", "split"))
        first, second = graph.relation.get(r1), graph.relation.get(r2)
        path_ok = (first is not None and second is not None and IDENTITY.name not in (r1, r2)
                   and graph.kind.get(e1) == first["subject_type"] and first["object_type"] == second["subject_type"]
                   and e3 != e1)
        e2_true = graph.object.get((e1, r1))
        e3_true = graph.object.get((e2_true, r2))
        answer_ok = (e2 == e2_true and e3 == e3_true and e3_true is not None
                     and [row["e1_name"], row["e2_name"], row["e3_name"]] == [graph.name.get(e) for e in (e1, e2, e3)])
        t1 = graph.text(r1, row["e1_name"])
        text_ok = (t1 is not None and row["t1_text"] == t1 and row["prompt"] == graph.prompt(r2, t1)
                   and row["first_hop_prompt"] == graph.prompt(r1, row["e1_name"])
                   and row["second_hop_prompt"] == graph.prompt(r2, row["e2_name"]))
        facts = [(e1, r1), (e2, r2)]
        ood = [graph.ood.get(f) for f in facts]
        rows.append({"path_ok": bool(path_ok), "answer_ok": bool(answer_ok), "text_ok": bool(text_ok),
                     "facts_in_distribution": split == "test_ood" or all(o is False or o is np.False_ for o in ood),
                     "facts_seen_in_train": split != "test_id" or all(f in seen for f in facts),
                     "facts_ood": split != "test_ood" or (None not in ood and all(bool(o) for o in ood))})
    return _with_checks(twohop, "query_id", rows, CHECKS["twohop"])


def split_sizes(twohop: pd.DataFrame, graph: Graph, params: GraphValidationParams) -> pd.DataFrame:
    """Each split's size against the config's: train phi x |ID atomic facts|, capped by the ID
    paths left once test_id is held out; test_id test_size, capped at half the ID paths; test_ood
    test_size, capped by the both-OOD paths."""
    paths = graph.paths()
    ood = [[bool(graph.ood.get(f)) for f in ((p[0], p[1]), (p[2], p[3]))] for p in paths]
    id_paths, ood_paths = sum(not any(o) for o in ood), sum(all(o) for o in ood)
    n_id_facts = sum(not bool(o) for o in graph.ood.values())
    counts = twohop["split"].value_counts().to_dict() if "split" in twohop else {}
    count = {s: int(counts.get(s, 0)) for s in SPLITS}
    expected = {"train": min(round(params.phi * n_id_facts), id_paths - count["test_id"]),
                "test_id": min(params.test_size, id_paths // 2),
                "test_ood": min(params.test_size, ood_paths)}
    ratio = [1.0 if count[s] == expected[s] else count[s] / expected[s] if expected[s] > 0 else float("inf")
             for s in SPLITS]
    return pd.DataFrame({"split": list(SPLITS), "count": [count[s] for s in SPLITS],
                         "expected": [expected[s] for s in SPLITS], "ratio": ratio})


def check_frames(tables: Mapping[str, pd.DataFrame], params: GraphValidationParams) -> dict[str, pd.DataFrame]:
    """Every frame the suites run on, each table with its check columns."""
    graph = Graph(tables)
    twohop = tables["twohop"].reindex(columns=SCHEMAS["twohop"].names)
    return {"relations": check_relations(tables["relations"]),
            "entities": check_entities(tables["entities"], tables["facts"], graph),
            NAMES: names_frame(tables, params.min_name_tokens),
            "facts": check_facts(tables["facts"], graph),
            "twohop": check_twohop(tables["twohop"], graph),
            HELDOUT: twohop[["split", "prompt"]].reset_index(drop=True),
            SPLIT_SIZES: split_sizes(twohop, graph, params)}


def computed_columns(name: str) -> list[str]:
    return [*CHECKS[name], *([OOD_SHARE] if name == "facts" else []), REASON]


def true_columns(name: str) -> list[gxe.Expectation]:
    return [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True], notes=CHECK_NOTES[c]) for c in CHECKS[name]]


def expectations(params: GraphValidationParams) -> dict[str, list[gxe.Expectation]]:
    """Each frame's suite, run on the frames from :func:`check_frames`."""
    suites = {name: schema_expectations(COLUMNS[name], computed_columns(name), f"{name} table") + true_columns(name)
              for name in CHECKS}
    suites["relations"].append(gxe.ExpectColumnValuesToBeUnique(column="relation"))
    suites["entities"] += [gxe.ExpectColumnValuesToBeUnique(column="entity_id"),
                           gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(ENTITY_TYPES))]
    suites["facts"] += [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["subject_text", "relation"],
                                            notes="one fact per subject text and relation: no ambiguous prompt"),
        gxe.ExpectColumnMeanToBeBetween(column=OOD_SHARE, **share_bounds(params.ood_fraction, params.ood_tolerance),
                                        notes="share of OOD among the primary atomic facts")]
    suites["twohop"] += [gxe.ExpectColumnValuesToBeUnique(column="query_id"),
                         gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))]
    suites[NAMES] = [
        empty_table_expectation("names list"),
        gxe.ExpectColumnValuesToBeUnique(column="text",
                                         notes="names and aliases: no alias equals a name or another alias"),
        gxe.ExpectColumnValuesToBeBetween(column="tokens", min_value=params.min_name_tokens,
                                          notes="at least min_name_tokens tokens of the graph tokenizer"),
        gxe.ExpectColumnValuesToBeInSet(column="pieces_ok", value_set=[True],
                                        notes="no name piece is a template word or the prompts' punctuation")]
    suites[HELDOUT] = [gxe.ExpectColumnValuesToBeUnique(
        column="prompt", notes="no two-hop prompt twice: no held-out query is trained on")]
    bounds = {"min_value": round(1 - params.split_tolerance, 9), "max_value": round(1 + params.split_tolerance, 9)}
    suites[SPLIT_SIZES] = [gxe.ExpectColumnValuesToBeBetween(
        column="ratio", **bounds, notes="each split's size over the size the config asks for")]
    return suites


def validate_graph(data_dir: Path, settings: Mapping[str, Any] | GraphConfig | GraphValidationParams,
                   docs_dir: Path, summary_path: Path | None = None) -> ValidationReport:
    """Validate the four Parquet tables in ``data_dir``, rebuild the Data Docs site at ``docs_dir``
    and write a JSON summary (default ``docs_dir/validation_summary.json``). Never raises on a data
    violation: check ``report.success`` or call ``raise_on_failure``."""
    params = GraphValidationParams.from_settings(settings)
    docs_dir = Path(docs_dir).resolve()  # GX wants an absolute site directory
    summary_path = Path(summary_path) if summary_path else docs_dir / "validation_summary.json"
    check_docs_dir(docs_dir)
    tables = {name: read_table(name, Path(data_dir) / f"{name}.parquet") for name in SCHEMAS}
    frames = check_frames(tables, params)
    suites = expectations(params)
    by_row = {**SUMMARY_FORMAT, "unexpected_index_column_names": [REASON]}
    formats = {NAMES: {**SUMMARY_FORMAT, "unexpected_index_column_names": ["entity_id"]},
               HELDOUT: {**SUMMARY_FORMAT, "unexpected_index_column_names": ["split"]},
               SPLIT_SIZES: {**SUMMARY_FORMAT, "unexpected_index_column_names": ["split"]}}
    batches = {name: (frames[name], suites[name], formats.get(name, by_row)) for name in frames}
    report = validate_batches(batches, docs_dir, "hopping_graph", summary_path)
    write_json(summary_dict(report, params, frames[SPLIT_SIZES]), summary_path)
    return report


def summary_dict(report: ValidationReport, params: GraphValidationParams, sizes: pd.DataFrame) -> dict:
    return {"success": report.success, "params": asdict(params), "tables": outcomes_by_table(report),
            "split_sizes": {r["split"]: {"count": int(r["count"]), "expected": int(r["expected"])}
                            for r in sizes.to_dict("records")},
            "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}
