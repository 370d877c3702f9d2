"""Stage: fine-tune a named LM on study 1's natural-language task with Lightning (held-out
validation, early stopping); the result is an HF directory."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.llm_stages import finetune
from modules.studies.logic.params import llm_params


def main() -> None:
    args = stage_args(__doc__, "model", "weights", "prompts", "out", "metrics")
    summary = finetune(llm_params(), args.model, Path(args.weights), Path(args.prompts), Path(args.out),
                       Path(args.metrics))
    print(f"{args.model}: validation first token {summary['best']['val_first_token']:.3f} after "
          f"{summary['best']['step']} steps; model at {args.out}")


if __name__ == "__main__":
    run(main)
