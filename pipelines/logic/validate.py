"""Stage: run the Great Expectations suites on every split, on the trace sequences (when the data
has them) and on the frozen benchmark; fails with one line naming the split and expectation."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import logic_section
from modules.studies.logic.stages import validate_data


def main() -> None:
    args = stage_args(__doc__, "data", "benchmark", "docs", "summary")
    report = validate_data(logic_section("data"), logic_section("validation").tolerance,
                           logic_section("benchmark").depth, Path(args.data), Path(args.benchmark), Path(args.docs),
                           Path(args.summary))
    print(f"validation passed: {len(report.outcomes)} expectations over {len(report.rows)} datasets; "
          f"Data Docs at {report.docs_index}")


if __name__ == "__main__":
    run(main)
