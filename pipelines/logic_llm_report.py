"""Stage (GPU pipeline): write reports/logic_llm/ (README.md and its figures) from the study's outputs."""
import argparse
import json
import shutil
from pathlib import Path

from modules.analysis.logic_llm_report import render_report
from modules.io import atomic_dir
from pipelines._stage import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default="artifacts/logic_llm/study")
    parser.add_argument("--out", default="reports/logic_llm")
    args = parser.parse_args()
    study = Path(args.study)
    if not (study / "summary.json").is_file():
        raise FileNotFoundError(f"no study results at {study}/summary.json; run the logic_llm_study stage first")
    summary = json.loads((study / "summary.json").read_text())
    with atomic_dir(args.out) as tmp:
        shutil.copytree(study / "figures", tmp / "figures")
        (tmp / "README.md").write_text(render_report(summary))
    print(f"report at {args.out}/README.md")


if __name__ == "__main__":
    run(main)
