"""Stage: write the LLM half's report (README.md and its figures) from the study outputs: every model
of logic_llm.models (--root) or, for the GPU pipeline, one 7B model's study (--study)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.llm_stages import gpu_report, lms_report
from modules.studies.logic.params import llm_params


def main() -> None:
    args = stage_args(__doc__, "out", root={"help": "artifacts/logic_llm: one folder per model"},
                      study={"help": "one study's output folder (the GPU pipeline)"})
    if bool(args.root) == bool(args.study):
        raise ValueError("give exactly one of --root and --study")
    report = lms_report(llm_params(), Path(args.root), Path(args.out)) if args.root \
        else gpu_report(Path(args.study), Path(args.out))
    print(f"report at {report}")


if __name__ == "__main__":
    run(main)
