"""Stage: the Great Expectations suites of study 3's fictional graph and curated real-world set; fails
with one line naming the table, the expectation and the offending rows."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.hopping.params import hopping_params
from modules.studies.hopping.stages import validate_data


def main() -> None:
    args = stage_args(__doc__, "data", "docs", "summary")
    reports = validate_data(hopping_params(), Path(args.data), Path(args.docs), Path(args.summary))
    print("validation passed: " + ", ".join(f"{name} {len(r.outcomes)} expectations" for name, r in reports.items()))


if __name__ == "__main__":
    run(main)
