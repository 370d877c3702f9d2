"""Stage: exact match of one seed's model on the test split and the frozen benchmark,
broken down by query chain x operator x source truth values."""
from pathlib import Path

import mlflow

from modules.data.logic import end_compact_prompt, read_split
from modules.io import atomic_write_text, write_json
from modules.models.logic_model import load_checkpoint
from modules.tracking.mlflow_tracking import log_table, tracked_run
from modules.training.evaluate import accuracy_row, breakdown, exact_matches
from modules.training.plots import breakdown_figure
from pipelines._stage import LOGIC_STUDY, params, run, seed_stage_args


def main() -> None:
    args = seed_stage_args(__doc__, benchmark="data/logic_benchmark.parquet")
    out = Path(args.out)
    model_dir = out / "models" / f"seed{args.seed}"
    sets = {"test": Path(args.data) / "test.parquet", "benchmark": Path(args.benchmark)}
    prompt_end = params("logic", "data", "prompt_end")  # the frozen benchmark's prompts end with `answer`
    with tracked_run(LOGIC_STUDY, f"evaluate-seed{args.seed}", {"seed": args.seed, "model": str(model_dir),
                                                                "prompt_end": prompt_end},
                     data_paths=list(sets.values())):
        model, tokenizer = load_checkpoint(model_dir)
        metrics, tables = {"seed": args.seed}, []
        for name, path in sets.items():
            frame = read_split(path)
            frame["prompt"] = [end_compact_prompt(p, prompt_end) for p in frame["prompt"]]
            correct = exact_matches(model, tokenizer, frame)
            metrics[name] = accuracy_row(correct)
            table = breakdown(frame, correct).assign(dataset=name)
            tables.append(table)
            mlflow.log_metrics({f"{name}_{k}": float(v) for k, v in metrics[name].items()})
            mlflow.log_figure(breakdown_figure(table, f"{name} exact match, seed {args.seed}"),
                              f"{name}_breakdown.png")
            log_table(table, f"{name}_breakdown.csv")
        write_json(metrics, out / "metrics" / f"seed{args.seed}.json")
        plot = tables[0].assign(group=lambda t: t.query_chain + "/" + t.operator + "/" + t.source_truth)
        atomic_write_text(out / "plots" / f"seed{args.seed}_breakdown.csv", plot.to_csv(index=False))
    print(f"seed {args.seed}: test exact match {metrics['test']['exact_match']:.4f} "
          f"(n={metrics['test']['n']}, 95% CI {metrics['test']['ci_low']:.4f}-{metrics['test']['ci_high']:.4f}); "
          f"benchmark {metrics['benchmark']['exact_match']:.4f} (n={metrics['benchmark']['n']})")


if __name__ == "__main__":
    run(main)
