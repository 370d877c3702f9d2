"""Stage: the probe set's independent label check and Great Expectations suite; fails with one line
naming the expectation and the offending pairs."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import validate_probe_data


def main() -> None:
    args = stage_args(__doc__, "data", "docs", "summary")
    report = validate_probe_data(ontology_params(), Path(args.data), Path(args.docs), Path(args.summary))
    print(f"validation passed: {len(report.outcomes)} expectations; Data Docs at {report.docs_index}")


if __name__ == "__main__":
    run(main)
