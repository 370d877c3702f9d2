"""Checks of the token-mixing probe set: an independent re-derivation of every pair's label from the
question's text (it shares no code with probe_data.py) and a Great Expectations suite over it.

The re-derivation reads each sentence "S is/are [not] O." as an ontology edge between the words'
singular forms; a pair in one sentence is *negative* if that sentence has "not", else *positive*; a
pair in two sentences is *unrelated* exactly when no chain of edges joins the two words.
"""
from __future__ import annotations

import re
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from modules.core.io import write_json
from modules.studies.ontology.probe_data import PAIR_SCHEMA
from modules.studies.ontology.vocabulary import CANONICAL, Vocabulary
from modules.validation import (SUMMARY_FORMAT, ValidationReport, check_docs_dir, outcomes_by_table, read_table,
                                schema_expectations, validate_batches)

# The contract as pandas reads the Parquet file back: the writer's schema, not a copy.
COLUMNS = {column: str(dtype) for column, dtype in PAIR_SCHEMA.empty_table().to_pandas().dtypes.items()}
CHECKS = {
    "words_ok": "word1 and word2 are whole words of the question at char1 < char2",
    "label_ok": "the label re-derived from the sentences: one sentence with 'not' negative, without it "
                "positive; two sentences unrelated iff no chain of sentences joins the words",
    "novel_ok": "a test question's concept and entity names never occur in a training question",
    "split_balanced": "the three labels are equally frequent within the split",
    "question_in_one_split": "no question text is in both splits",
}
REASON = "reason"
SENTENCE = re.compile(r"([A-Z][a-z]*) (?:is|are)( not)? ([a-z]+)\.")


def _singular(word: str) -> str:
    low = word.lower()
    if low.endswith("uses"):
        return low[:-2]
    return low[:-1] if low.endswith("s") and not low.endswith("us") else low


def _sentences(question: str) -> list[tuple[int, int, str, str, bool]]:
    """(start, end, subject, object, negated) of each fact sentence before the query."""
    facts = question.split(" True or false:")[0]
    return [(m.start(), m.end(), _singular(m.group(1)), _singular(m.group(3)), bool(m.group(2)))
            for m in SENTENCE.finditer(facts)]


def _connected(edges: list[tuple[str, str]], a: str, b: str) -> bool:
    seen, frontier = {a}, [a]
    while frontier:
        node = frontier.pop()
        for x, y in edges:
            for here, there in ((x, y), (y, x)):
                if here == node and there not in seen:
                    seen.add(there)
                    frontier.append(there)
    return b in seen


def derive_label(question: str, char1: int, char2: int, word1: str, word2: str) -> str | None:
    sentences = _sentences(question)
    within = [s for s in sentences if s[0] <= char1 < s[1] and s[0] <= char2 < s[1]]
    if within:
        start, _, subject, obj, negated = within[0]
        if (_singular(word1), _singular(word2)) != (subject, obj):
            return None  # not the sentence's subject and object
        return "negative" if negated else "positive"
    edges = [(s[2], s[3]) for s in sentences]
    return "positive-path" if _connected(edges, _singular(word1), _singular(word2)) else "unrelated"


def _whole_word(text: str, start: int, word: str) -> bool:
    end = start + len(word)
    return (0 <= start and text[start:end] == word and (start == 0 or not text[start - 1].isalpha())
            and (end == len(text) or not text[end].isalpha()))


def check_pairs(frame: pd.DataFrame, vocab: Vocabulary = CANONICAL) -> pd.DataFrame:
    """The pairs with their check columns and a ``reason`` (the row's id and failed checks)."""
    adjectives = {a.lower() for a in vocab.adjectives}

    def names(question: str) -> set[str]:
        return {w for s in _sentences(question) for w in (s[2], s[3]) if w not in adjectives}

    out = frame.copy()
    out["words_ok"] = [bool(c1 < c2 and _whole_word(q, c1, w1) and _whole_word(q, c2, w2))
                       for q, c1, c2, w1, w2 in zip(frame.question, frame.char1, frame.char2, frame.word1, frame.word2)]
    out["label_ok"] = [derive_label(q, c1, c2, w1, w2) == label for q, c1, c2, w1, w2, label in
                       zip(frame.question, frame.char1, frame.char2, frame.word1, frame.word2, frame.label)]
    train_names = set().union(*(names(q) for q in frame.loc[frame.split == "train", "question"].unique()))
    out["novel_ok"] = [split != "test" or not (names(q) & train_names) for split, q in zip(frame.split, frame.question)]
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    balanced = {split: len(set(row)) == 1 and len(row) == 3 for split, row in counts.iterrows()}
    out["split_balanced"] = frame.split.map(balanced).fillna(False).astype(bool)
    splits_of = frame.groupby("question")["split"].nunique()
    out["question_in_one_split"] = frame.question.map(splits_of).eq(1)
    failed = out[list(CHECKS)].apply(lambda row: ", ".join(c for c in CHECKS if not row[c]), axis=1)
    out[REASON] = out["id"].astype(str) + ": " + failed.where(failed != "", "ok")
    return out


def probe_expectations() -> list[gxe.Expectation]:
    checks = schema_expectations(COLUMNS, [*CHECKS, REASON], "probe pairs")
    checks += [gxe.ExpectColumnValuesToBeUnique(column="id"),
               gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test"]),
               gxe.ExpectColumnValuesToBeInSet(column="label", value_set=["positive", "negative", "unrelated"]),
               gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=[
                   "concept-concept", "concept-property", "entity-concept"]),
               gxe.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=["train", "test"],
                                                        notes="both splits are present")]
    checks += [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True], notes=note) for c, note in CHECKS.items()]
    return checks


def validate_probe_data(data_dir: Path, docs_dir: Path, summary_path: Path,
                        vocab: Vocabulary = CANONICAL) -> ValidationReport:
    """Check ``data_dir/pairs.parquet``, rebuild the Data Docs site and write the JSON summary;
    never raises on a data violation (``raise_on_failure`` does)."""
    docs_dir = Path(docs_dir).resolve()
    check_docs_dir(docs_dir)
    frame = read_table("pairs", Path(data_dir) / "pairs.parquet")
    missing = [c for c in COLUMNS if c not in frame]
    checked = check_pairs(frame, vocab) if not missing else frame
    batches = {"pairs": (checked, probe_expectations(), {**SUMMARY_FORMAT, "unexpected_index_column_names": [REASON]}
                         if not missing else SUMMARY_FORMAT)}
    report = validate_batches(batches, docs_dir, "ontology_probes", Path(summary_path))
    write_json({"success": report.success, "tables": outcomes_by_table(report),
                "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}, summary_path)
    return report
