"""Stage: study 2's independent checker and Great Expectations suites on every table; fails with one
line naming the table, the expectation and the offending rows."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import validate_data


def main() -> None:
    args = stage_args(__doc__, "data", "docs", "summary")
    report = validate_data(ontology_params(), Path(args.data), Path(args.docs), Path(args.summary))
    print(f"validation passed: {len(report.outcomes)} expectations over {len(report.rows)} tables; "
          f"Data Docs at {report.docs_index}")


if __name__ == "__main__":
    run(main)
