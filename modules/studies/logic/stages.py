"""What each of study 1's pipeline stages does, one function a stage: read inputs, run inside an
MLflow run of the study's experiment, write outputs atomically. The scripts in pipelines/logic/
only parse paths and params and call these. Great Expectations is imported only by the two
stages that validate (2-3 s of every other stage's start)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd

from modules.core.io import atomic_dir, atomic_write_text, write_json, write_yaml
from modules.core.tracking import data_hash, lightning_logger, log_table, log_trained_model, tracked_run
from modules.studies.logic import MODEL_NAME, STUDY
from modules.studies.logic.data import (end_compact_prompt, generate_splits, generate_traces, read_split,
                                        read_training_rows, splits_from_params, training_files, write_splits,
                                        write_traces)
from modules.studies.logic.data.dataset import generate_flip_pairs
from modules.studies.logic.params import ActivationParams, BenchmarkParams, DataParams, PairsParams, TuneParams


def _need(path: Path, what: str, stage: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no {what} at {path}; run the {stage} stage first")
    return Path(path)


# ---------------------------------------------------------------- data

def generate_data(data: DataParams, out: Path) -> dict[str, int]:
    """The train/val/test splits (and the trace sequences, when asked for) at ``out``."""
    with tracked_run(STUDY, "generate", data.as_dict()):
        start = time.perf_counter()
        try:  # the data module names the key; say where it lives
            frames = splits_from_params(data.as_dict())
        except ValueError as error:
            raise ValueError(f"params.yaml logic.data.{error}") from None
        try:
            traces = data.traces
            trace_frame = generate_traces(traces.seed, traces.size, traces.depth, data.logop_share, data.operators,
                                          data.prompt_end, rule_order=data.rule_order)
        except ValueError as error:
            raise ValueError(f"params.yaml logic.data.traces.{error}") from None
        with atomic_dir(out) as tmp:
            write_splits(frames, tmp)
            if len(trace_frame):
                write_traces(trace_frame, Path(tmp) / "traces.parquet")
        rows = {"traces": len(trace_frame), **{split: len(frame) for split, frame in frames.items()}}
        mlflow.log_metrics({"generate_s": time.perf_counter() - start, **{f"rows_{k}": v for k, v in rows.items()}})
        mlflow.log_param("data_hash.splits", data_hash([out]))
    return rows


def build_benchmark(benchmark: BenchmarkParams, data: DataParams, out_dir: Path) -> Path:
    """The frozen benchmark split, written into ``out_dir``; its path."""
    frames = generate_splits(benchmark.seed, {"benchmark": benchmark.size}, benchmark.depth, data.logop_share,
                             data.operators)
    return write_splits(frames, out_dir)["benchmark"]


def freeze_benchmark(benchmark: BenchmarkParams, data: DataParams, target: Path, check: bool) -> str:
    """Write the frozen benchmark at ``target``, or (``check``) verify that the generator still
    reproduces it byte for byte."""
    if check:
        if not target.is_file():
            raise FileNotFoundError(f"{target} is missing: run `dvc pull data.dvc` (or restore it)")
        with tempfile.TemporaryDirectory() as tmp:
            if build_benchmark(benchmark, data, Path(tmp)).read_bytes() != target.read_bytes():
                raise ValueError(f"{target} differs from what the generator now produces: "
                                 "generator semantics drifted")
        return f"{target}: the generator reproduces the frozen benchmark byte for byte"
    target.parent.mkdir(exist_ok=True)
    build_benchmark(benchmark, data, target.parent).replace(target)
    return f"wrote {target}"


def validation_settings(data: DataParams, tolerance: float, benchmark_depth: int) -> tuple[dict, dict]:
    """The suite parameters of the generated splits, and each split's own where it differs: a split
    of query twins queries each chain in half its rows, and the frozen benchmark keeps the depth
    and prompt ending it was written with."""
    with_traces = data.traces.size > 0
    config = {"tolerance": tolerance, "logop_share": data.logop_share, "operators": data.operators,
              "depth": data.depth, "prompt_end": data.prompt_end, "rule_order": data.rule_order,
              "trace_depth": data.traces.depth if with_traces else None}
    split_params = {split: {**config, "logop_share": 0.5} for split in data.query_twins}
    split_params["benchmark"] = {**config, "depth": benchmark_depth, "prompt_end": "answer", "trace_depth": None,
                                 "rule_order": "shuffled"}
    return config, split_params


def validate_data(data: DataParams, tolerance: float, benchmark_depth: int, data_dir: Path, benchmark: Path,
                  docs: Path, summary: Path):
    """The Great Expectations suites on every split, the traces (when there are any) and the frozen
    benchmark; raises one line naming the split and expectation on any violation."""
    from modules.studies.logic.validation import validate_logic_splits
    from modules.validation import log_report

    config, split_params = validation_settings(data, tolerance, benchmark_depth)
    splits = {split: data_dir / f"{split}.parquet" for split in data.sizes}
    splits["benchmark"] = benchmark
    traces = data_dir / "traces.parquet" if data.traces.size > 0 else None
    missing = [str(p) for p in [*splits.values(), traces] if p is not None and not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset file(s) not found: {', '.join(missing)}")
    with tracked_run(STUDY, "validate", config, data_paths=[p for p in [*splits.values(), traces] if p]):
        report = validate_logic_splits(splits, config, docs, summary, split_params=split_params, traces=traces)
        log_report(report, docs)
    return report


def generate_pairs(config: PairsParams, section: str, run_name: str, out: Path, docs: Path,
                   exclude: Path | None = None) -> pd.DataFrame:
    """Query-flip pairs (compact for the small model, few-shot natural language for an LLM), never
    reusing a prompt of ``exclude``; a failed GX suite leaves no pairs behind."""
    from modules.studies.logic.validation import validate_flip_pairs
    from modules.validation import raise_on_failure

    excluded = read_split(exclude)["prompt"].tolist() if exclude else []
    with tracked_run(STUDY, run_name, config.as_dict(), data_paths=[exclude] if exclude else []):
        try:
            pairs = generate_flip_pairs(config.seed, config.n_pairs, depth=config.depth, k=config.shots,
                                        exclude=excluded, prompt_end=config.prompt_end, rule_order=config.rule_order)
        except ValueError as error:  # the data module names the key; say where it lives
            raise ValueError(f"params.yaml {section}: {error}") from None
        with atomic_dir(out) as tmp:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
            raise_on_failure(validate_flip_pairs(tmp / "pairs.parquet", docs, summary_path=tmp / "validation.json"))
        mlflow.log_metrics({"pairs": float(len(pairs)), "validation_success": 1.0})
        mlflow.log_param("data_hash.pairs", data_hash([out / "pairs.parquet"]))
    return pairs


# ---------------------------------------------------------------- training

def tune_training(tune: TuneParams, base, data_dir: Path, out: Path):
    """The Optuna study over the training space; the best parameters as `dvc exp run -S` keys."""
    from modules.studies.logic.training.tune import run_study

    val = data_dir / "val.parquet"
    with tracked_run(STUDY, "tune", tune.as_dict(), data_paths=[*training_files(data_dir), val]):
        study = run_study(read_training_rows(data_dir), read_split(val), base, tune.space, n_trials=tune.n_trials,
                          timeout_s=tune.timeout_s, storage=tune.storage, study_name=tune.study_name, seed=tune.seed,
                          trial_max_steps=tune.trial_max_steps, mlflow_study=STUDY, objective=tune.objective,
                          pruner=tune.pruner, min_steps=tune.min_steps)
        best = {f"logic.train.{k}": v for k, v in study.best_params.items()}
        mlflow.log_metric(f"best_{tune.objective}", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        write_yaml({"study": study.study_name, "best_value": float(study.best_value), "trials": len(study.trials),
                    "params": best}, out)
        mlflow.log_artifact(str(out))
    return study, best


def train_seed(config, seed: int, data_dir: Path, out: Path):
    """Train one seed's model (resumable from its checkpoints) and export it with its curve."""
    from modules.studies.logic.training.plots import curve_figure
    from modules.studies.logic.tokenizer import build_logic_tokenizer
    from modules.studies.logic.training.train import export_model, train_logic_model

    val_path = data_dir / "val.parquet"
    with tracked_run(STUDY, f"train-seed{seed}", {**config.as_dict(), "seed": seed},
                     data_paths=[*training_files(data_dir), val_path]) as active:
        result = train_logic_model(read_training_rows(data_dir), read_split(val_path), config, seed,
                                   ckpt_dir=out / "checkpoints" / f"seed{seed}", loggers=[lightning_logger(active)],
                                   label=f"train seed{seed}")
        summary = {"seed": seed, "steps": result.steps, "wall_s": result.wall_s,
                   "val_exact_match": result.val_exact_match, "time_to_perfect_val_s": result.time_to_perfect_val_s,
                   "step_to_perfect_val": result.step_to_perfect_val, "restarts": len(result.restarts),
                   "restart_checks": [r["check"] for r in result.restarts], "trained_seed": result.seed}
        curve = pd.DataFrame(result.history)
        export_model(result.module, out / "models" / f"seed{seed}")
        log_trained_model(result.module.model, build_logic_tokenizer(), out / "models" / f"seed{seed}", MODEL_NAME)
        write_json(summary, out / "train" / f"seed{seed}.json")
        atomic_write_text(out / "train" / f"seed{seed}_curve.csv", curve.to_csv(index=False))
        # the scores are already curves (the logger, at each validation's step): logged again here
        # they would add a second point at the last step
        mlflow.log_metrics({"steps": float(result.steps), "wall_s": result.wall_s,
                            "restarts": float(len(result.restarts))}, step=result.steps)
        mlflow.set_tag("trained_seed", str(result.seed))
        if result.restarts:
            mlflow.log_dict({"abandoned_runs": result.restarts}, "restarts.json")
        mlflow.log_figure(curve_figure(curve, f"seed {seed}: training"), "training_curve.png")
        mlflow.log_artifact(str(out / "train" / f"seed{seed}_curve.csv"))
    return result


def evaluate_seed(seed: int, prompt_end: str, data_dir: Path, benchmark: Path, out: Path) -> dict:
    """Exact match on the test split and the frozen benchmark, broken down by query chain x
    operator x source truth values."""
    from modules.studies.logic.model import load_checkpoint
    from modules.studies.logic.training.evaluate import accuracy_row, breakdown, exact_matches
    from modules.studies.logic.training.plots import breakdown_figure

    model_dir = out / "models" / f"seed{seed}"
    sets = {"test": data_dir / "test.parquet", "benchmark": benchmark}
    with tracked_run(STUDY, f"evaluate-seed{seed}", {"seed": seed, "model": str(model_dir), "prompt_end": prompt_end},
                     data_paths=[*sets.values(), model_dir]):
        model, tokenizer = load_checkpoint(model_dir)
        metrics, tables = {"seed": seed}, []
        for name, path in sets.items():
            frame = read_split(path)
            if frame.empty:
                raise ValueError(f"evaluation: the {name} split at {path} has no rows")
            # the frozen benchmark's prompts end with `answer`; the model reads its own ending
            frame["prompt"] = [end_compact_prompt(p, prompt_end) for p in frame["prompt"]]
            correct = exact_matches(model, tokenizer, frame)
            metrics[name] = accuracy_row(correct)
            table = breakdown(frame, correct).assign(dataset=name)
            tables.append(table)
            mlflow.log_metrics({f"{name}_{k}": float(v) for k, v in metrics[name].items()})
            mlflow.log_figure(breakdown_figure(table, f"{name} exact match, seed {seed}"), f"{name}_breakdown.png")
            log_table(table, f"{name}_breakdown.csv")
        write_json(metrics, out / "metrics" / f"seed{seed}.json")
        plot = tables[0].assign(group=lambda t: t.query_chain + "/" + t.operator + "/" + t.source_truth)
        atomic_write_text(out / "plots" / f"seed{seed}_breakdown.csv", plot.to_csv(index=False))
    return metrics


# ---------------------------------------------------------------- analyses

def cache_seed_activations(config: ActivationParams, seed: int, data_dir: Path, out: Path) -> Path:
    """One seed's residual-stream activations at ``config.positions`` of the test prompts."""
    from modules.studies.logic.activations import cache_activations

    model_dir = out / "models" / f"seed{seed}"
    test_path = data_dir / "test.parquet"
    target = out / "activations" / f"seed{seed}"
    with tracked_run(STUDY, f"cache-activations-seed{seed}", {**config.as_dict(), "seed": seed},
                     data_paths=[test_path, model_dir]):
        counts = cache_activations(model_dir, test_path, config, target)
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
    return target


def analyze_seed(config, seed: int, data_dir: Path, pairs_path: Path, out: Path) -> Path:
    """The circuit study of one seed's model: routing attention, probes on the cached activations,
    steering, patching and the planning circuit."""
    from modules.engine.activation_cache import ActivationCache
    from modules.studies.logic.circuit import cached_residuals, encode_prompts, run_circuit_study
    from modules.studies.logic.circuit_outputs import circuit_metrics, log_circuit, write_circuit
    from modules.studies.logic.model import load_checkpoint

    model_dir, cache_dir = out / "models" / f"seed{seed}", out / "activations" / f"seed{seed}"
    test_path = data_dir / "test.parquet"
    _need(pairs_path, "flip pairs", "generate_logic_pairs")
    model, tokenizer = load_checkpoint(model_dir)
    test, pairs = read_split(test_path), pd.read_parquet(pairs_path)
    cache = ActivationCache(cache_dir, expect={"dataset_hash": data_hash([test_path])})
    rows = cache["example_index"].tolist()
    first_prompt = encode_prompts(test["prompt"].iloc[:1].tolist(), tokenizer)[0]
    residuals = cached_residuals(cache, cache.metadata["extra"]["positions"], first_prompt, tokenizer)
    name = f"seed{seed}"
    with tracked_run(STUDY, f"analysis-{name}", {"seed": seed, "model": str(model_dir), **vars(config)},
                     data_paths=[test_path, pairs_path, model_dir]) as mlflow_run:
        result = run_circuit_study(model, tokenizer, test, pairs, residuals, rows, config,
                                   progress=lambda message: print(f"{name}: {message}", flush=True))
        with atomic_dir(out / "analysis" / name) as tmp:
            write_circuit(result, tmp, str(model_dir), mlflow_run.info.run_id)
        write_json(circuit_metrics(result.summary), out / "analysis" / f"{name}.json")
        log_circuit(result, str(model_dir), data_hash([test_path, pairs_path]), out / "analysis" / name / "figures")
    return out / "analysis" / name


def write_report(seeds: list[int], data: DataParams, analysis: Path, metrics: Path, out: Path,
                 training_dir: Path | None = None) -> Path:
    """The study's report (README.md and each seed's figures) from the analysis, evaluation and
    (``training_dir``) training outputs."""
    from modules.analysis.report import write_report as write_report_dir
    from modules.studies.logic.circuit_report import render_report

    summaries, evaluation, training = {}, {}, {}
    for seed in seeds:
        folder = analysis / f"seed{seed}"
        summary = json.loads(_need(folder / "summary.json", f"analysis for seed {seed}", "analyze_logic").read_text())
        summary["probes"]["table"] = pd.read_csv(folder / "probes.csv").to_dict("records")
        summaries[seed] = summary
        if (metrics / f"seed{seed}.json").is_file():
            evaluation[seed] = json.loads((metrics / f"seed{seed}.json").read_text())
        if training_dir is not None and (training_dir / f"seed{seed}.json").is_file():
            training[seed] = json.loads((training_dir / f"seed{seed}.json").read_text())
    return write_report_dir(out, render_report(summaries, evaluation, data=data.as_dict(), training=training),
                            {f"seed{seed}": analysis / f"seed{seed}" / "figures" for seed in summaries},
                            study=STUDY, run_name="report", results=[summaries, evaluation])


# ---------------------------------------------------------------- reproduction on another machine

def check_retrain(config, seed: int, prompt_end: str, data_dir: Path, benchmark: Path, committed: Path,
                  scratch: Path) -> dict:
    """Retrain one seed into ``scratch`` and compare it with the committed run under ``committed``
    (``models/seed<N>``, ``metrics/seed<N>.json``). Training is bit-reproducible only on the same
    CPU and thread count, so the check is on what the model scores: the retrained test exact match
    must lie inside the committed run's 95% CI. Raises ValueError (one line) when it does not."""
    from modules.core.checksums import sha256_file

    committed_metrics = json.loads(_need(committed / "metrics" / f"seed{seed}.json", f"committed metrics of seed {seed}",
                                         "evaluate_logic").read_text())["test"]
    committed_weights = _need(committed / "models" / f"seed{seed}" / "model.safetensors",
                              f"committed model of seed {seed}", "train_logic")
    train_seed(config, seed, data_dir, scratch)
    retrained = evaluate_seed(seed, prompt_end, data_dir, benchmark, scratch)["test"]
    same_bytes = sha256_file(committed_weights) == sha256_file(scratch / "models" / f"seed{seed}" / "model.safetensors")
    inside = committed_metrics["ci_low"] <= retrained["exact_match"] <= committed_metrics["ci_high"]
    outcome = {"seed": seed, "retrained": retrained, "committed": committed_metrics, "same_bytes": same_bytes,
               "within_ci": inside}
    line = (f"seed {seed}: retrained test exact match {retrained['exact_match']:.4f} (n = {retrained['n']}), committed "
            f"{committed_metrics['exact_match']:.4f} (95% CI {committed_metrics['ci_low']:.4f}-"
            f"{committed_metrics['ci_high']:.4f}); weights {'identical' if same_bytes else 'differ'}")
    if not inside:
        raise ValueError(f"{line}: the retrained model scores outside the committed run's CI")
    outcome["line"] = f"{line}: within the committed run's CI"
    return outcome
