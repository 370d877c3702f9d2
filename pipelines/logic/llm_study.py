"""Stage: the LLM study on query-flip prompts - accuracy, head patching (outputs, queries, keys,
values), attention families, necessity and sufficiency of the circuit - for a named model's base or
fine-tuned weights. --section logic_llm (the main job's real LMs) or logic_llm_gpu (a 7B model)."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.llm_stages import study
from modules.studies.logic.params import llm_params


def main() -> None:
    args = stage_args(__doc__, "section", "model", "label", "prompts", "out", "metrics",
                      weights={"help": "the weights' directory (default: the registry's for --model)"})
    result = study(llm_params(args.section), args.model, Path(args.weights) if args.weights else None, args.label,
                   Path(args.prompts), Path(args.out), Path(args.metrics))
    accuracy = result.summary["accuracy"]["all"]
    print(f"{args.model} ({args.label}): first-token accuracy {accuracy['first_token']['mean']:.3f} "
          f"(n={accuracy['n']}), {len(result.summary['circuit'])} circuit heads; results at {args.out}")


if __name__ == "__main__":
    run(main)
