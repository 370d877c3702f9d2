"""Stage (GPU pipeline): the LLM study on query-flip prompts - accuracy, head patching (outputs,
queries, keys, values), head families, necessity and sufficiency - for any HF causal LM."""
import argparse
from pathlib import Path

import pandas as pd

from modules.analysis.logic_llm import StudyConfig, log_study, run_study, study_metrics, write_study
from modules.engine import load_model
from modules.io import atomic_dir, write_json
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", default="artifacts/logic_llm/prompts/pairs.parquet")
    parser.add_argument("--out", default="artifacts/logic_llm/study")
    parser.add_argument("--metrics", default="artifacts/logic_llm/metrics.json")
    args = parser.parse_args()
    config = params("logic_llm")
    study = StudyConfig.from_mapping(config["study"])
    model_name = str(config["model"])
    if not Path(args.prompts).is_file():
        raise FileNotFoundError(f"no prompts at {args.prompts}; run the logic_llm_prompts stage first")
    pairs = pd.read_parquet(args.prompts)
    model, tokenizer = load_model(model_name, dtype=config["dtype"], device_map=config["device_map"],
                                  trust_remote_code=bool(config["trust_remote_code"]))
    with tracked_run(LOGIC_STUDY, "llm-study", {"model": model_name, "dtype": config["dtype"],
                                                 "device_map": config["device_map"], **config["study"]},
                     data_paths=[args.prompts]) as mlflow_run:
        result = run_study(model, tokenizer, pairs, study, progress=lambda message: print(message, flush=True))
        with atomic_dir(args.out) as tmp:
            write_study(result, tmp, model_name, mlflow_run.info.run_id)
        write_json(study_metrics(result.summary), args.metrics)
        log_study(result, model_name, data_hash([args.prompts]), Path(args.out) / "figures")
    accuracy = result.summary["accuracy"]["all"]
    print(f"{model_name}: first-token accuracy {accuracy['first_token']['mean']:.3f} "
          f"(n={accuracy['n']}), {len(result.summary['circuit'])} circuit heads; results at {args.out}")


if __name__ == "__main__":
    run(main)
