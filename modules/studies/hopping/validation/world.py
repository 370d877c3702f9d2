"""Great Expectations suite of study 3's curated real-world queries (modules/studies/hopping/world.py).

The loader already refuses a malformed file; this suite re-derives what the analyses rely on, from the
frame as given, and documents it in Data Docs:

* the schema (world.py's columns, never null), non-blank ids, labels and relations, unique ids, at
  least ``min_queries`` queries, and both relations in the relation table;
* check columns: each template is its relation's (one '{}'), the two-hop prompt is the paper's
  nesting plus " is", the hop and shortcut prompts and t1's text follow from the same templates, no
  answer alias (e3's label or aliases) occurs in the prompt, e1, e2 and e3 are three entities, and
  no alias of one character is kept (the paper's matcher drops them; curated data should not carry them).

    report = validate_world(Path("data/hopping_world.yaml"), {"min_queries": 150},
                            Path("reports/data_docs/hopping/world"))
    raise_on_failure(report)   # DataValidationError with a one-line message
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import great_expectations.expectations as gxe
import pandas as pd

from modules.core.io import write_json
from modules.core.params import load, param
from modules.studies.hopping.matching import answer_aliases
from modules.studies.hopping.world import (ALIAS_FIELDS, COLUMNS, LABELS, RELATIONS, derived_fields,
                                           read_world_unchecked, two_hop_prompt)
from modules.validation import (SUMMARY_FORMAT, ValidationReport, check_docs_dir, schema_expectations,
                                validate_batches)

TABLE = "world"
REASON = "reason"  # a failing row's id and its failed checks, for messages
CHECK_NOTES = {
    "templates_ok": "r1_template and r2_template are the relation table's templates of r1 and r2, each with one '{}'",
    "prompt_ok": "the prompt is r2's template around r1's template around e1, then ' is'",
    "hop_prompts_ok": "first_hop_prompt, second_hop_prompt, entity_shortcut_prompt and t1_text follow "
                      "from the same templates",
    "answer_not_in_prompt": "no answer alias (e3's label or aliases) occurs in the prompt, lower-cased",
    "entities_distinct": "e1, e2 and e3 are three different entities (case-insensitive)",
    "aliases_ok": "every alias list is a list of strings longer than one character",
}
CHECKS = tuple(CHECK_NOTES)


@dataclass(frozen=True)
class WorldValidationParams:
    min_queries: int = param(150, range=(1, 10**6))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | "WorldValidationParams") -> "WorldValidationParams":
        """From {min_queries?} (params.yaml's hopping.validation.world)."""
        if isinstance(settings, cls):
            return settings
        return load(cls, dict(settings), "hopping.validation.world", complete=False)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _template_ok(template: Any) -> bool:
    return isinstance(template, str) and template.count("{}") == 1 and "{" not in template.replace("{}", "") \
        and "}" not in template.replace("{}", "")


def _templates_ok(row: Mapping, relations: Mapping[str, str]) -> bool:
    return all(_is_text(row[r]) and _template_ok(relations.get(row[r])) and row[t] == relations[row[r]]
               for r, t in (("r1", "r1_template"), ("r2", "r2_template")))


def _prompt_ok(row: Mapping) -> bool:
    return row["prompt"] == two_hop_prompt(row["r1_template"], row["r2_template"], row["e1"])


def _hop_prompts_ok(row: Mapping) -> bool:
    derived = derived_fields(row["e1"], row["e2"], row["r1_template"], row["r2_template"])
    return all(row[k] == derived[k] for k in ("first_hop_prompt", "second_hop_prompt", "entity_shortcut_prompt",
                                              "t1_text"))


def _answer_not_in_prompt(row: Mapping) -> bool:
    prompt = row["prompt"].lower()
    return not any(alias.lower() in prompt for alias in answer_aliases(row["e3"], row["e3_aliases"]) if alias)


def _entities_distinct(row: Mapping) -> bool:
    labels = [row[e] for e in ("e1", "e2", "e3")]
    return all(_is_text(e) for e in labels) and len({e.casefold() for e in labels}) == 3


def _aliases_ok(row: Mapping) -> bool:
    return all(isinstance(row[f], list) and all(isinstance(a, str) and len(a.strip()) > 1 for a in row[f])
               for f in ALIAS_FIELDS)


def _safely(check: Callable[[Mapping], bool], row: Mapping) -> bool:
    """A broken row (a missing field, a wrong type) fails its check instead of stopping the suite."""
    try:
        return bool(check(row))
    except Exception:
        return False


def check_world(frame: pd.DataFrame, relations: Mapping[str, str] = RELATIONS) -> pd.DataFrame:
    """``frame`` followed by its boolean check columns and the reason column."""
    table = frame.reindex(columns=list(COLUMNS))
    rows = table.to_dict("records")
    checks = {
        "templates_ok": [_safely(lambda r: _templates_ok(r, relations), r) for r in rows],
        "prompt_ok": [_safely(_prompt_ok, r) for r in rows],
        "hop_prompts_ok": [_safely(_hop_prompts_ok, r) for r in rows],
        "answer_not_in_prompt": [_safely(_answer_not_in_prompt, r) for r in rows],
        "entities_distinct": [_safely(_entities_distinct, r) for r in rows],
        "aliases_ok": [_safely(_aliases_ok, r) for r in rows],
    }
    checked = pd.DataFrame(checks, index=frame.index, columns=list(CHECKS), dtype=bool)
    reasons = [f"{query_id}: {', '.join(c for c in CHECKS if not ok[c])}" if not ok.all() else ""
               for query_id, (_, ok) in zip(table["id"], checked.iterrows())]
    return pd.concat([frame, checked, pd.Series(reasons, index=frame.index, name=REASON, dtype=object)], axis=1)


def world_expectations(params: WorldValidationParams, relations: Mapping[str, str]) -> list[gxe.Expectation]:
    checks = schema_expectations({c: "object" for c in COLUMNS}, [*CHECKS, REASON], "real-world query set")
    checks += [gxe.ExpectColumnValuesToMatchRegex(column=c, regex=r"\S", notes="a non-blank string")
               for c in LABELS]
    checks += [
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        # not a row-count expectation: raise_on_failure reads a failing one as an empty table
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="id", min_value=params.min_queries,
                                                    notes="enough distinct queries for the analyses"),
        *(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=sorted(relations),
                                          notes="a relation with a template") for c in ("r1", "r2")),
        *(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True], notes=CHECK_NOTES[c]) for c in CHECKS)]
    return checks


def validate_world(frame_or_path: pd.DataFrame | Path | str, settings: Mapping[str, Any] | WorldValidationParams,
                   docs_dir: Path, summary_path: Path | None = None,
                   relations: Mapping[str, str] | None = None) -> ValidationReport:
    """Validate the real-world queries (a frame, or the YAML file read without the loader's rules so
    that every violation is reported), rebuild the Data Docs site at ``docs_dir`` and write a JSON
    summary (default ``docs_dir/validation_summary.json``). The relation table is ``relations``, else
    the file's (or the frame's ``attrs["relations"]``), else world.py's. Never raises on a data
    violation: check ``report.success`` or call ``raise_on_failure``."""
    params = WorldValidationParams.from_settings(settings)
    docs_dir = Path(docs_dir).resolve()  # GX wants an absolute site directory
    summary_path = Path(summary_path) if summary_path else docs_dir / "validation_summary.json"
    check_docs_dir(docs_dir)
    frame = frame_or_path if isinstance(frame_or_path, pd.DataFrame) else read_world_unchecked(Path(frame_or_path))
    relations = dict(relations or frame.attrs.get("relations") or RELATIONS)
    checked = check_world(frame, relations)
    row_format = {**SUMMARY_FORMAT, "unexpected_index_column_names": [REASON]}
    report = validate_batches({TABLE: (checked, world_expectations(params, relations), row_format)}, docs_dir,
                              "hopping", summary_path)
    write_json(summary_dict(report, params), summary_path)
    return report


def summary_dict(report: ValidationReport, params: WorldValidationParams) -> dict:
    return {"success": report.success, "params": asdict(params), "rows": report.rows[TABLE],
            "expectations": [{k: v for k, v in asdict(o).items() if k != "split"} for o in report.outcomes],
            "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}
