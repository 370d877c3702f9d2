"""Stage (GPU pipeline): the LLM study on query-flip prompts - accuracy, head patching (outputs,
queries, keys, values), attention families, necessity and sufficiency of the circuit."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.logic.params import llm_params
from modules.studies.logic.stages import llm_study


def main() -> None:
    args = stage_args(__doc__, "prompts", "out", "metrics")
    config = llm_params()
    result = llm_study(config, Path(args.prompts), Path(args.out), Path(args.metrics))
    accuracy = result.summary["accuracy"]["all"]
    print(f"{config.model}: first-token accuracy {accuracy['first_token']['mean']:.3f} (n={accuracy['n']}), "
          f"{len(result.summary['circuit'])} circuit heads; results at {args.out}")


if __name__ == "__main__":
    run(main)
