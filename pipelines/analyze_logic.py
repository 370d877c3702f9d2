"""Stage: the small model's circuit study for one seed - routing attention, probes on the cached
residual stream, routing direction and steering, flip-pair patching and the planning circuit."""
from pathlib import Path

import pandas as pd

from modules.analysis.logic_circuit import (CircuitConfig, cached_residuals, circuit_metrics, encode_prompts,
                                            log_circuit, run_circuit_study, write_circuit)
from modules.data.logic import read_split
from modules.engine.activation_cache import ActivationCache
from modules.io import atomic_dir, write_json
from modules.models.logic_model import load_checkpoint
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, params, run, seed_stage_args


def main() -> None:
    args = seed_stage_args(__doc__, pairs="artifacts/logic/pairs/pairs.parquet")
    config = CircuitConfig.from_mapping(params("logic", "analysis"))
    out = Path(args.out)
    model_dir, cache_dir = out / "models" / f"seed{args.seed}", out / "activations" / f"seed{args.seed}"
    test_path, pairs_path = Path(args.data) / "test.parquet", Path(args.pairs)
    if not pairs_path.is_file():
        raise FileNotFoundError(f"no flip pairs at {pairs_path}; run the generate_logic_pairs stage first")
    model, tokenizer = load_checkpoint(model_dir)
    test, pairs = read_split(test_path), pd.read_parquet(pairs_path)
    cache = ActivationCache(cache_dir, expect={"dataset_hash": data_hash([test_path])})
    rows = cache["example_index"].tolist()
    first_prompt = encode_prompts(test["prompt"].iloc[:1].tolist(), tokenizer)[0]
    residuals = cached_residuals(cache, cache.metadata["extra"]["positions"], first_prompt, tokenizer)
    name = f"seed{args.seed}"
    with tracked_run(LOGIC_STUDY, f"analysis-{name}", {"seed": args.seed, "model": str(model_dir),
                                                       **vars(config)},
                     data_paths=[test_path, pairs_path]) as mlflow_run:
        result = run_circuit_study(model, tokenizer, test, pairs, residuals, rows, config,
                                   progress=lambda message: print(f"{name}: {message}", flush=True))
        with atomic_dir(out / "analysis" / name) as tmp:
            write_circuit(result, tmp, str(model_dir), mlflow_run.info.run_id)
        write_json(circuit_metrics(result.summary), out / "analysis" / f"{name}.json")
        log_circuit(result, str(model_dir), data_hash([test_path, pairs_path]), out / "analysis" / name / "figures")
    print(f"{name}: analysis at {out / 'analysis' / name}")


if __name__ == "__main__":
    run(main)
