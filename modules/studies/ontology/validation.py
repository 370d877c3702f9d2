"""Great Expectations suites for study 2's four tables (items, shots, subtasks, onehop).

Each table gets one suite: its schema (the columns and dtypes of dataset.py's SCHEMAS as pandas reads
them back), no nulls, unique ids, the value sets, label balance per ontology, and every check column
of the independent checker (modules/studies/ontology/checker.py) true: chain of thought and label
re-derived, subtask targets and prefixes, sources, corruptions of one word of the target's type.
A cross-table suite asserts no test item is a few-shot example. GX runs in an ephemeral context, so
a run leaves only the Data Docs site and a JSON summary.

    report = validate_ontology(Path("artifacts/ontology/data"), {"hops": 2, "label_tolerance": 0.05},
                               Path("reports/data_docs/ontology"))
    raise_on_failure(report)   # DataValidationError with a one-line message
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import great_expectations.expectations as gxe
import pandas as pd

from modules.core.io import write_json
from modules.core.params import load, param
from modules.studies.ontology.checker import (ITEM_CHECKS, ONEHOP_CHECKS, PROOF_KEY, REASON, SHOT_CHECKS,
                                              SUBTASK_CHECKS, check_tables)
from modules.studies.ontology.data.dataset import ONEHOP_CORRUPTIONS, SCHEMAS
from modules.studies.ontology.data.generator import HOPS, KINDS, ONTOLOGIES, TYPES
from modules.studies.ontology.vocabulary import CANONICAL, Vocabulary
from modules.validation import (SUMMARY_FORMAT, ValidationReport, check_docs_dir, outcomes_by_table, read_table,
                                schema_expectations, share_bounds, validate_batches)

# The dataset contract as pandas reads the Parquet files back: the writer's schemas, not a copy.
COLUMNS: dict[str, dict[str, str]] = {
    name: {column: str(dtype) for column, dtype in schema.empty_table().to_pandas().dtypes.items()}
    for name, schema in SCHEMAS.items()}
CHECKS = {"items": ITEM_CHECKS, "shots": SHOT_CHECKS, "subtasks": SUBTASK_CHECKS, "onehop": ONEHOP_CHECKS}
VARIANTS = ("paper", "fact")      # the authors' corruption, and the one hitting the fact
SEGMENTS = ("cot", "input")       # where a corruption lands: the generated prefix or the question
CROSS = "items_vs_shots"
CHECK_NOTES = {
    "cot_ok": "the chain of thought re-derived from question and query alone",
    "label_ok": "True iff the queried adjective is derivable for the entity through any fact",
    "answer_ok": "the answer is the re-derived chain of thought and label",
    "input_ok": "the Input line is question, query and 'Let us think step by step.'",
    "facts_ok": "the facts are the proof path plus the distractors (shots: a property and a nonce word)",
    "meta_ok": "entity, chain, hops and property columns agree with the text",
    "subtasks_complete": "the item has one subtask row per chain-of-thought word, plus the 'fact' variant",
    "block_ok": "the prompt block is the paper's '### Input:' / '### Response:' block",
    "item_known": "the subtask's item_id is an item",
    "target_ok": "the target is the content word number `subtask` of the re-derived chain of thought",
    "prefix_ok": "the prefix is the chain of thought before the target, without trailing space",
    "kind_ok": "decision (subject), copy (object of a restated fact), induction (of a derived sentence)",
    "type_ok": "target_type is the target's type in the vocabulary",
    "variant_ok": "the 'fact' variant only for the copy of the property",
    "source_ok": "the word at source_char is a form of the target, in the facts",
    "corruption_ok": "exactly one word differs, at corrupt_char of corrupt_segment, corrupted_word -> replacement",
    "replacement_ok": "the replacement has the target's type and is another word",
    "site_ok": "the corrupted word is where the authors' rule puts it",
    "one_word_ok": "text and corrupted_text differ in exactly one word",
    "corrupted_target_ok": "corrupted_target is what the corrupted line asks for",
}


@dataclass(frozen=True)
class ValidationParams:
    hops: int = param(choices=HOPS)                              # ontology.data.hops: CoT length, subtask range
    label_tolerance: float = param(0.05, range=(1e-9, 0.5))      # allowed deviation of each True share from 1/2

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> "ValidationParams":
        """From {hops, label_tolerance?}: ontology.data.hops beside params.yaml's ontology.validation."""
        return load(cls, dict(params), "validation", complete=False)


def _balance_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``label_<ontology>``: 1.0/0.0 on that ontology's rows, NaN elsewhere, so the column mean is
    the ontology's True share (GX's mean skips nulls)."""
    out = pd.DataFrame(index=frame.index)
    for ontology in ONTOLOGIES:
        if {"label", "ontology"} <= set(frame):
            own = frame["ontology"] == ontology
            out[f"label_{ontology}"] = frame["label"].map({True: 1.0, False: 0.0}).where(own)
        else:
            out[f"label_{ontology}"] = float("nan")
    return out


def check_frames(frames: Mapping[str, pd.DataFrame], vocab: Vocabulary = CANONICAL) -> dict[str, pd.DataFrame]:
    """Each table with its check columns (then the balance columns of items and shots), and the
    cross-table frame of items' and shots' chains of thought and proof keys."""
    checks = check_tables(frames, vocab)
    out = {name: pd.concat([frame, checks[name]], axis=1) for name, frame in frames.items()}
    for name in ("items", "shots"):
        out[name] = pd.concat([out[name], _balance_columns(frames[name])], axis=1)

    def cots(name: str) -> pd.DataFrame:
        cot = frames[name]["cot"] if "cot" in frames[name] else pd.Series(None, index=frames[name].index)
        return pd.DataFrame({"split": name, "cot": cot.astype(object), PROOF_KEY: checks[name][PROOF_KEY]})
    # A shot may repeat (drawn independently); a repeat across the two tables is a leak.
    out[CROSS] = pd.concat([cots("items"), cots("shots").drop_duplicates(["cot", PROOF_KEY])],
                           ignore_index=True)
    return out


def computed_columns(name: str) -> list[str]:
    extra = [PROOF_KEY] if name in ("items", "shots") else []
    balance = [f"label_{o}" for o in ONTOLOGIES] if name in ("items", "shots") else []
    return [*CHECKS[name], *extra, REASON, *balance]


def table_expectations(name: str, params: ValidationParams) -> list[gxe.Expectation]:
    """One table's suite, run on its frame from :func:`check_frames`."""
    checks = schema_expectations(COLUMNS[name], computed_columns(name), f"{name} table")
    checks.append(gxe.ExpectColumnValuesToBeUnique(column="id"))
    checks += [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True], notes=CHECK_NOTES[c])
               for c in CHECKS[name]]
    if name in ("items", "shots"):
        checks += [
            gxe.ExpectColumnValuesToBeInSet(column="hops", value_set=[params.hops]),
            gxe.ExpectColumnValuesToBeInSet(column="ontology", value_set=list(ONTOLOGIES)),
            *(gxe.ExpectColumnMeanToBeBetween(column=f"label_{o}", **share_bounds(0.5, params.label_tolerance),
                                              notes=f"share of True labels among the {o} {name}")
              for o in ONTOLOGIES)]
    if name == "shots":
        checks.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["ontology", "order"],
                                                          notes="one prompt position per shot"))
    if name == "subtasks":
        checks += [
            gxe.ExpectColumnValuesToBeBetween(column="subtask", min_value=0, max_value=4 * params.hops + 1,
                                              notes="two content words per chain-of-thought sentence"),
            gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(KINDS)),
            gxe.ExpectColumnValuesToBeInSet(column="variant", value_set=list(VARIANTS)),
            gxe.ExpectColumnValuesToBeInSet(column="target_type", value_set=list(TYPES)),
            gxe.ExpectColumnValuesToBeInSet(column="corrupt_segment", value_set=list(SEGMENTS)),
            gxe.ExpectColumnValuesToBeInSet(column="ontology", value_set=list(ONTOLOGIES))]
    if name == "onehop":
        checks.append(gxe.ExpectColumnValuesToBeInSet(column="corruption", value_set=list(ONEHOP_CORRUPTIONS)))
    return checks


def cross_expectations() -> list[gxe.Expectation]:
    return [gxe.ExpectColumnValuesToBeUnique(
                column="cot", notes="no test item's chain of thought is a few-shot example's"),
            gxe.ExpectColumnValuesToBeUnique(
                column=PROOF_KEY, notes="no test item has a few-shot example's entity, chain and property")]


def validate_ontology(data_dir: Path, params: Mapping[str, Any] | ValidationParams, docs_dir: Path,
                      summary_path: Path | None = None, vocab: Vocabulary = CANONICAL) -> ValidationReport:
    """Validate the four Parquet tables in ``data_dir``, rebuild the Data Docs site at ``docs_dir``
    and write a JSON summary (default ``docs_dir/validation_summary.json``). Never raises on a data
    violation: check ``report.success`` or call ``raise_on_failure``."""
    params = params if isinstance(params, ValidationParams) else ValidationParams.from_mapping(params)
    docs_dir = Path(docs_dir).resolve()  # GX wants an absolute site directory
    summary_path = Path(summary_path) if summary_path else docs_dir / "validation_summary.json"
    check_docs_dir(docs_dir)
    frames = {name: read_table(name, Path(data_dir) / f"{name}.parquet") for name in SCHEMAS}
    checked = check_frames(frames, vocab)
    # Failures show each offending row's reason (its id and failed checks), or its table.
    row_format = {**SUMMARY_FORMAT, "unexpected_index_column_names": [REASON]}
    batches = {name: (checked[name], table_expectations(name, params), row_format) for name in SCHEMAS}
    batches[CROSS] = (checked[CROSS], cross_expectations(),
                      {**SUMMARY_FORMAT, "unexpected_index_column_names": ["split"]})
    report = validate_batches(batches, docs_dir, "ontology", summary_path)
    write_json(summary_dict(report, params), summary_path)
    return report


def summary_dict(report: ValidationReport, params: ValidationParams) -> dict:
    return {"success": report.success, "params": asdict(params), "tables": outcomes_by_table(report),
            "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}
