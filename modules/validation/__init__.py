"""Great Expectations plumbing shared by every study's data checks.

A study builds its expectation suites and check columns; this package runs them in an ephemeral
GX context, publishes one Data Docs site per stage (replaced in one rename), reduces the results
to :class:`Outcome` records and raises one-line :class:`DataValidationError` messages.

    batches = {"train": (frame_with_check_columns, expectations, SUMMARY_FORMAT)}
    outcomes = run_suites(batches, docs_dir, suite_prefix="logic")
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

from modules.core.io import replace_dir  # noqa: E402
from modules.core.web_assets import localize_site  # noqa: E402

MAX_EXAMPLES = 5  # unexpected values kept per expectation in the summary
EXPECTED_KWARGS = ("type_", "value_set", "min_value", "max_value", "column_list")
SUMMARY_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
# (the frame with its check columns, the suite's expectations, GX's result format)
Batch = tuple[pd.DataFrame, list[gxe.Expectation], dict]


def empty_table_expectation(what: str) -> gxe.Expectation:
    """Fails on a table without rows, so an empty split is reported as such."""
    return gxe.ExpectTableRowCountToBeBetween(min_value=1, notes=f"the {what} is not empty")


class DataValidationError(Exception):
    """A dataset split violated an expectation; the message is one line."""


@dataclass
class Outcome:
    split: str
    expectation: str              # e.g. "expect_column_values_to_be_unique(id)"
    success: bool
    expected: str = ""            # the expectation's bounds or allowed values, for messages
    observed: Any = None          # observed value, or unexpected count for row-wise checks
    examples: list = field(default_factory=list)
    error: str | None = None


@dataclass
class ValidationReport:
    success: bool
    outcomes: list[Outcome]
    rows: dict[str, int]
    docs_index: Path
    summary_path: Path

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]


def raise_on_failure(report: ValidationReport) -> None:
    failures = report.failures()
    if not failures:
        return
    empty = [o.split for o in failures if o.expectation.startswith("expect_table_row_count_to_be_between")]
    if empty:  # every other expectation of an empty table passes or fails for that one reason
        raise DataValidationError(f"data validation failed: split '{empty[0]}' is empty (0 rows)")
    first = failures[0]
    observed = first.observed
    if isinstance(observed, dict) and "unexpected_count" in observed:
        detail = f"{observed['unexpected_count']} of {observed['element_count']} values unexpected"
    else:
        detail = first.error or f"observed {short(observed)}"
    involved = dict.fromkeys(e["split"] for e in first.examples if isinstance(e, dict) and "split" in e)
    if involved:  # a cross-split check: name the splits that collide
        detail += f" across splits {', '.join(involved)}"
    if first.expected:
        detail += f", expected {first.expected}"
    if first.examples:
        detail += f", e.g. {short(first.examples[0])}"
    more = f" (+{len(failures) - 1} more failing expectations)" if len(failures) > 1 else ""
    raise DataValidationError(f"data validation failed: split '{first.split}' expectation "
                              f"{first.expectation}: {detail}{more}")


def short(value: Any, limit: int = 120) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def share_bounds(share: float, tolerance: float) -> dict[str, float]:
    return {"min_value": round(max(0.0, share - tolerance), 9),
            "max_value": round(min(1.0, share + tolerance), 9)}


def schema_expectations(columns: Mapping[str, str], computed: list[str], what: str) -> list[gxe.Expectation]:
    """The columns in order (then the computed check columns), each of its type and never null."""
    checks: list[gxe.Expectation] = [empty_table_expectation(what), gxe.ExpectTableColumnsToMatchOrderedList(
        column_list=[*columns, *computed], notes=f"{what} columns followed by the computed check columns")]
    for column, dtype in columns.items():
        checks.append(gxe.ExpectColumnTypeToBe(column=column, type_=dtype))
        checks.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    return checks


def read_table(name: str, path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"split '{name}': no such Parquet file {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"split '{name}': cannot read Parquet file {path}: {exc}") from exc


def check_docs_dir(docs_dir: Path) -> None:
    # The old site is replaced wholesale, so refuse a directory that is not one.
    if docs_dir.exists() and (not docs_dir.is_dir() or
                              (any(docs_dir.iterdir()) and not (docs_dir / "index.html").exists())):
        raise ValueError(f"docs_dir {docs_dir} exists and is not a Data Docs site; "
                         "give an empty or new directory")


def _context(site_dir: Path):
    site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(site_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"local_site": site}, progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def _outcome(split: str, result) -> Outcome:
    config = result.expectation_config
    kwargs = config.kwargs
    target = kwargs.get("column") or ", ".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs) or "table"
    info = result.to_json_dict()
    res = info.get("result") or {}
    if "observed_value" in res:
        observed = res["observed_value"]
    elif "unexpected_count" in res:
        observed = {"unexpected_count": res["unexpected_count"],
                    "element_count": res.get("element_count")}
    else:
        observed = None
    expected = ", ".join(f"{k}={short(kwargs[k], 60)}" for k in EXPECTED_KWARGS if k in kwargs)
    return Outcome(split=split, expectation=f"{config.type}({target})", success=bool(result.success),
                   expected=expected, observed=_plain(observed),
                   examples=_examples(res),
                   error=_error(info.get("exception_info") or {}))


def _error(info: dict) -> str | None:
    # Either one {raised_exception, exception_message} record or a dict of them per metric.
    records = [info] if "raised_exception" in info else list(info.values())
    messages = [r.get("exception_message") for r in records
                if isinstance(r, dict) and r.get("raised_exception")]
    return " ".join(" ".join(str(m).split()) for m in dict.fromkeys(messages)) or None


def _plain(value: Any) -> Any:
    # numpy scalars -> Python, so the summary is plain JSON and messages read cleanly.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _examples(result: dict) -> list:
    # Index entries carry the unexpected value plus the unexpected_index_column_names (split).
    indexed = [e for e in result.get("partial_unexpected_index_list") or [] if isinstance(e, dict)]
    mismatched = (result.get("details") or {}).get("mismatched") or []  # column-list checks
    examples = indexed or list(result.get("partial_unexpected_list") or []) or mismatched
    return _plain(examples[:MAX_EXAMPLES])


def _validate(context, batches: Mapping[str, Batch], suite_prefix: str) -> list[Outcome]:
    """One checkpoint per batch (each needs its own dataframe), then one Data Docs build:
    rendering dominates the run time, so it is done once rather than per checkpoint."""
    source = context.data_sources.add_pandas(suite_prefix)
    outcomes: list[Outcome] = []
    for name, (frame, expectations, result_format) in batches.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_prefix}_{name}",
                                                       expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{name}", data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"checkpoint_{name}", validation_definitions=[definition],
            result_format=result_format))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        # GX returns results in its own order; report them in suite order (schema first).
        order = {e.id: i for i, e in enumerate(suite.expectations)}
        for run_result in result.run_results.values():
            ordered = sorted(run_result.results, key=lambda r: order[r.expectation_config.id])
            outcomes += [_outcome(name, r) for r in ordered]
    context.build_data_docs()
    return outcomes


def run_suites(batches: Mapping[str, Batch], docs_dir: Path, suite_prefix: str) -> list[Outcome]:
    """Run the suites and replace the Data Docs site at ``docs_dir`` in one rename."""
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=docs_dir.parent, prefix=f".{docs_dir.name}.new-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the site is meant to be shared
    try:
        outcomes = _validate(_context(staging), batches, suite_prefix)
        localize_site(staging)
        replace_dir(staging, docs_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcomes




def validate_batches(batches: Mapping[str, Batch], docs_dir: Path, suite_prefix: str,
                     summary_path: Path) -> ValidationReport:
    """:func:`run_suites`, gathered into one report (its summary is the study's to write)."""
    outcomes = run_suites(batches, docs_dir, suite_prefix)
    return ValidationReport(success=all(o.success for o in outcomes), outcomes=outcomes,
                            rows={name: len(frame) for name, (frame, _, _) in batches.items()},
                            docs_index=docs_dir / "index.html", summary_path=summary_path)


def log_report(report: ValidationReport, docs_dir: Path) -> None:
    """Into the active MLflow run: the counts, the summary and the Data Docs site; then fail with
    one line on any violation."""
    import mlflow

    mlflow.log_metrics({"validation_success": float(report.success),
                        "failed_expectations": float(len(report.failures())),
                        "checked_expectations": float(len(report.outcomes))})
    mlflow.log_artifact(str(report.summary_path))
    mlflow.log_artifacts(str(docs_dir), artifact_path="data_docs")
    raise_on_failure(report)


def outcomes_by_table(report: ValidationReport) -> dict[str, dict]:
    """Per table (batch): whether it passed, its rows and each expectation's outcome, for a JSON summary."""
    tables: dict[str, dict] = {}
    for outcome in report.outcomes:
        entry = tables.setdefault(outcome.split, {"success": True, "rows": report.rows[outcome.split],
                                                  "expectations": []})
        entry["success"] &= outcome.success
        entry["expectations"].append({k: v for k, v in asdict(outcome).items() if k != "split"})
    return tables
