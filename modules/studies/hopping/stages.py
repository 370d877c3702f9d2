"""What each of study 3's pipeline stages does, one function a stage: read inputs, run inside an
MLflow run of the study's experiment (``hopping-too-late``), write outputs atomically. The scripts in
pipelines/hopping/ only parse paths and params and call these.

Models are named as in ``hopping.models``: ``graph`` is the model trained here from scratch on the
fictional knowledge graph (its queries: the graph's held-out two-hop queries); every other name is a
pretrained LM of params.yaml ``lms`` (its queries: the curated real-world set).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml

from modules.core.io import atomic_dir, atomic_write_text, write_json
from modules.core.tracking import lightning_logger, log_json, log_table, log_trained_model, tracked_run
from modules.studies.hopping import MODEL_NAME, STUDY
from modules.studies.hopping.params import GRAPH_MODEL, HoppingParams, check_model_listed
from modules.analysis.report import write_report


def _threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def graph_config(params: HoppingParams):
    from modules.core.params import load
    from modules.studies.hopping.data.graph import GraphConfig

    return load(GraphConfig, dict(params.graph), "hopping.graph")


def generate_data(params: HoppingParams, out: Path) -> dict[str, int]:
    """The fictional knowledge graph's tables at ``out`` (Parquet)."""
    from modules.studies.hopping.data.graph import generate_graph, write_tables

    config = graph_config(params)
    with tracked_run(STUDY, "generate", dict(params.graph)):
        start = time.perf_counter()
        tables = generate_graph(config)
        with atomic_dir(out) as tmp:
            write_tables(tables, tmp)
        rows = {name: len(frame) for name, frame in tables.items()}
        rows |= {f"twohop.{split}": int(n) for split, n in tables["twohop"]["split"].value_counts().items()}
        mlflow.log_metrics({f"rows.{name}": float(n) for name, n in rows.items()}
                           | {"seconds": time.perf_counter() - start})
    return rows


def validate_data(params: HoppingParams, data: Path, docs: Path, summary: Path):
    """The GX suites of the fictional graph and of the real-world set; one line naming the table,
    the expectation and the offending rows on any violation."""
    from modules.studies.hopping.validation.graph import GraphValidationParams, validate_graph
    from modules.studies.hopping.validation.world import validate_world
    from modules.validation import log_report, raise_on_failure

    config = graph_config(params)
    settings = dict(params.validation)
    graph_settings = GraphValidationParams.from_settings(
        {"phi": config.phi, "ood_fraction": config.ood_fraction, "test_size": config.test_size,
         **settings.get("graph", {})})
    with tracked_run(STUDY, "validate", settings, data_paths=[data, params.world]):
        reports = {"graph": validate_graph(data, graph_settings, docs / "graph"),
                   "world": validate_world(Path(params.world), settings.get("world", {}), docs / "world")}
        for name, report in reports.items():
            log_report(report, docs / name)
        write_json({name: {"success": report.success, "expectations": len(report.outcomes),
                           "failures": [f"{o.split}: {o.expectation}" for o in report.failures()]}
                    for name, report in reports.items()}, summary)
        for report in reports.values():
            raise_on_failure(report)
    return reports


def _tables(data: Path) -> dict[str, pd.DataFrame]:
    from modules.studies.hopping.data.graph import read_tables

    return read_tables(data)


def _train_config(params: HoppingParams, tuned: Path | None):
    from modules.studies.hopping.training import GraphTrainConfig

    config = GraphTrainConfig.from_params(params.train, complete=True)
    if params.tune.use_tuned and tuned is not None:
        best = yaml.safe_load(tuned.read_text())["params"]
        config = GraphTrainConfig.from_params(asdict(config) | best)
    return config


def tune(params: HoppingParams, data: Path, out: Path) -> dict:
    """An Optuna study over the search space on short runs; the best trial's values at ``out``."""
    from modules.studies.hopping.data.tokenizer import build_graph_tokenizer
    from modules.studies.hopping.training import GraphTrainConfig, tune_graph_model

    tables = _tables(data)
    base = GraphTrainConfig.from_params(params.train, complete=True)
    with tracked_run(STUDY, "tune", {"train": asdict(base), "tune": asdict(params.tune)}, data_paths=[data]):
        study = tune_graph_model(build_graph_tokenizer(tables), tables, base, params.tune.space,
                                 n_trials=params.tune.n_trials, trial_max_steps=params.tune.trial_max_steps,
                                 storage=params.tune.storage, study_name=params.tune.study_name,
                                 seed=params.seed, mlflow_study=STUDY, objective_set=params.tune.objective)
        best = {"params": study.best_trial.params, "value": float(study.best_value),
                "trial": study.best_trial.number, "study": study.study_name}
        mlflow.log_metric("best_value", best["value"])
        log_json(best, "best_params.json")
        atomic_write_text(out, yaml.safe_dump(best, sort_keys=True))
    return best


def train(params: HoppingParams, data: Path, tuned: Path | None, out: Path, metrics: Path) -> dict:
    """Train the from-scratch model; an HF directory at ``out`` and its exact-match scores."""
    from modules.studies.hopping.data.tokenizer import build_graph_tokenizer
    from modules.core.hf_dir import save_checkpoint
    from modules.studies.hopping.training import train_graph_model

    tables = _tables(data)
    config = _train_config(params, tuned)
    tokenizer = build_graph_tokenizer(tables)
    with tracked_run(STUDY, "train", {**asdict(config), "seed": params.seed}, data_paths=[data]) as run:
        result = train_graph_model(tokenizer, tables, config, params.seed, loggers=[lightning_logger(run)])
        save_checkpoint(result.model, tokenizer, out)
        log_trained_model(result.model, tokenizer, out, MODEL_NAME)
        summary = {"steps": result.steps, "wall_s": result.wall_s, "mlflow_run_id": run.info.run_id,
                   **{f"{name}_exact_match": value for name, value in result.scores.items()}}
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        log_table(pd.DataFrame(result.history), "history.csv")
        write_json(summary, metrics)
    return summary


def load_model(params: HoppingParams, name: str, graph_model: Path | None):
    """(model, tokenizer, path) of a name in ``hopping.models``."""
    check_model_listed(params, name)
    if name == GRAPH_MODEL:
        from modules.engine.adapters import load_model as load_dir
        from modules.core.checksums import verify_checksums

        if graph_model is None or not graph_model.is_dir():
            raise FileNotFoundError(f"no from-scratch model at {graph_model}; run the train_hopping stage first")
        verify_checksums(graph_model)
        model, tokenizer = load_dir(graph_model, attn_implementation="eager")
        return model, tokenizer, graph_model
    from modules.lms.registry import load_named

    return load_named(name)


def study_queries(params: HoppingParams, name: str, data: Path) -> pd.DataFrame:
    from modules.studies.hopping.queries import graph_queries, world_queries

    if name == GRAPH_MODEL:
        queries = graph_queries(_tables(data), params.evaluate.graph_splits)
    else:
        from modules.studies.hopping.world import load_world

        queries = world_queries(load_world(Path(params.world)))
    return queries.head(params.evaluate.max_queries) if params.evaluate.max_queries else queries


def _inputs(name: str, model_path: Path, *read: Path) -> list[Path]:
    """What a model stage's run records as read: ``read`` and the from-scratch model (linked to its training
    run; a pretrained LM's directory is named by the run's ``path`` param instead of hashed at every run)."""
    return [*read, *([model_path] if name == GRAPH_MODEL else [])]


def evaluate(params: HoppingParams, name: str, data: Path, graph_model: Path | None, out: Path) -> dict:
    """E0: first hop, second hop and two-hop composition per query; the subsets the analyses use."""
    from modules.studies.hopping.queries import e0_summary, evaluate_queries, traceable

    model, tokenizer, path = load_model(params, name, graph_model)
    queries = study_queries(params, name, data)
    config = params.evaluate
    with tracked_run(STUDY, f"evaluate-{name}", {"model": name, "path": str(path), **asdict(config)},
                     data_paths=_inputs(name, path, data, Path(params.world))) as run:
        start = time.perf_counter()
        analysable, dropped = traceable(tokenizer, queries)
        evaluated = evaluate_queries(model, tokenizer, analysable, config.max_new_tokens, config.batch_size,
                                     progress=lambda m: print(m, flush=True))
        summary = {"model": name, "queries": len(queries), "untraceable": dropped, **e0_summary(evaluated),
                   "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        mlflow.log_metrics({f"{split}.{key}": value["mean"] for split, entry in summary.items()
                            if isinstance(entry, dict) for key, value in entry.items()
                            if isinstance(value, dict) and "mean" in value}
                           | {f"subset.{k}": float(v) for k, v in summary["all"]["subsets"].items()})
        log_json(summary, "evaluate.json")
        log_table(evaluated, "evaluated.csv")
        with atomic_dir(out) as tmp:
            evaluated.to_parquet(tmp / "evaluated.parquet", index=False)
            write_json(summary, tmp / "evaluate.json")
    return summary


def _evaluated(path: Path) -> pd.DataFrame:
    file = path / "evaluated.parquet"
    if not file.is_file():
        raise FileNotFoundError(f"no E0 results at {file}; run the evaluate_hopping stage first")
    return pd.read_parquet(file)


def backpatch(params: HoppingParams, name: str, data: Path, graph_model: Path | None, evaluated_dir: Path,
              out: Path, metrics: Path) -> dict:
    """E5 and its controls on the named model; the long table of generations and every rate."""
    from modules.analysis.outputs import write_results
    from modules.studies.hopping.backpatch import BackpatchConfig, backpatch_metrics, run_backpatching, success_grid
    from modules.studies.hopping.queries import traceable

    config = BackpatchConfig.from_mapping(params.backpatch, complete=True)
    _threads(config.threads)
    evaluated = _evaluated(evaluated_dir)
    model, tokenizer, path = load_model(params, name, graph_model)
    queries, _ = traceable(tokenizer, study_queries(params, name, data))
    with tracked_run(STUDY, f"backpatch-{name}", {"model": name, "path": str(path), **asdict(config)},
                     data_paths=_inputs(name, path, data, evaluated_dir)) as run:
        start = time.perf_counter()
        table = run_backpatching(model, tokenizer, queries, evaluated, queries, config,
                                 progress=lambda m: print(m, flush=True))
        summary = {"model": name, **backpatch_metrics(table, config.n_boot, config.seed),
                   "n_layers": model.config.num_hidden_layers, "seconds": time.perf_counter() - start,
                   "mlflow_run_id": run.info.run_id}
        grids = success_grid(table, summary["n_layers"])
        figures = backpatch_figures(grids, name)
        with atomic_dir(out) as tmp:
            write_results(tmp, summary, {"generations.csv": table}, grids, figures)
        flat = _rate_metrics(summary)
        mlflow.log_metrics(flat)
        log_json(summary, "backpatch.json")
        log_table(table, "generations.csv")
        for file, figure in figures.items():
            mlflow.log_figure(figure, f"figures/{file}")
        write_json(flat, metrics)
    return summary


def _rate_metrics(summary: dict) -> dict[str, float]:
    """The headline rates as flat metrics: subset.position.rate."""
    flat = {}
    for subset in ("incorrect", "correct"):
        for position, entry in summary.get(subset, {}).items():
            if not isinstance(entry, dict):
                continue
            for key, value in entry.items():
                if isinstance(value, dict) and value.get("mean") is not None:
                    flat[f"{subset}.{position}.{key}"] = float(value["mean"])
    return flat


def backpatch_figures(grids: dict[str, torch.Tensor], name: str) -> dict:
    from modules.studies.hopping.report import layer_heatmap

    return {f"{key}.png": layer_heatmap(grid, f"{name}: {key.replace('_', ' ')} (share fixed)")
            for key, grid in grids.items()}


def layers(params: HoppingParams, name: str, data: Path, graph_model: Path | None, evaluated_dir: Path,
           out: Path) -> dict:
    """E1-E4 on the named model: the description Patchscope grid, knockout, sublayer lens, stages."""
    from modules.analysis.outputs import write_results
    from modules.studies.hopping.layers import (LayersConfig, description_grids, readout_summary, run_layers,
                                                stage_summary, stage_table, target_continuation)
    from modules.studies.hopping.queries import traceable
    from modules.studies.hopping.report import layer_heatmap, stage_boxplot

    mapping = {**params.layers, **(params.graph_layers if name == GRAPH_MODEL else {})}
    config = LayersConfig.from_mapping(mapping, complete=True)
    _threads(config.threads)
    evaluated = _evaluated(evaluated_dir)
    model, tokenizer, path = load_model(params, name, graph_model)
    queries, _ = traceable(tokenizer, study_queries(params, name, data))
    with tracked_run(STUDY, f"layers-{name}", {"model": name, "path": str(path), **asdict(config)},
                     data_paths=_inputs(name, path, data, evaluated_dir)) as run:
        start = time.perf_counter()
        tables = run_layers(model, tokenizer, queries, evaluated, config, progress=lambda m: print(m, flush=True))
        stages = stage_table(tables)
        n_layers = model.config.num_hidden_layers
        summary = {"model": name, "n_layers": n_layers, "stages": stage_summary(stages),
                   "knockout_window": config.knockout_window, "target_prompt": config.target_prompt,
                   "target_generation": target_continuation(model, tokenizer, config), "readout": readout_summary(tables["patchscope"]),
                   "knockout_changed_by_layer": tables["knockout"].groupby("layer")["changed"].mean().tolist()
                   if len(tables["knockout"]) else [],
                   "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        grids = description_grids(tables["patchscope"], n_layers)
        figures = {f"{key}.png": layer_heatmap(grid, f"{name}: {key.replace('_', ' ')} (share)")
                   for key, grid in grids.items()}
        figures["stages.png"] = stage_boxplot(stages, name)
        with atomic_dir(out) as tmp:
            write_results(tmp, summary, {f"{key}.csv": frame for key, frame in {**tables, "stages": stages}.items()},
                          grids, figures)
        log_json(summary, "layers.json")
        for key, frame in {**tables, "stages": stages}.items():
            log_table(frame, f"{key}.csv")
        for file, figure in figures.items():
            mlflow.log_figure(figure, f"figures/{file}")
    return summary


def report(params: HoppingParams, root: Path, train_metrics: Path | None, out: Path, gpu: bool = False) -> Path:
    """reports/hopping/README.md and its figures, from every model's outputs under ``root``: the
    from-scratch model and ``models``, or with ``gpu`` the 7B models of ``gpu.models``."""

    from modules.studies.hopping.report import render_report

    results: dict = {}
    for name in (params.gpu.models if gpu else (GRAPH_MODEL, *params.models)):
        entry = {}
        for part, file in (("evaluate", "evaluate/evaluate.json"), ("backpatch", "backpatch/summary.json"),
                           ("layers", "layers/summary.json")):
            path = root / name / file
            if path.is_file():
                entry[part] = json.loads(path.read_text())
        if "evaluate" not in entry:
            raise FileNotFoundError(f"no E0 results for {name} at {root / name / 'evaluate'}; run evaluate_hopping first")
        results[name] = entry
    training = json.loads(train_metrics.read_text()) if train_metrics and train_metrics.is_file() else None
    figures = {f"{name}/{part}": root / name / part / "figures" for name in results for part in ("backpatch", "layers")
               if (root / name / part / "figures").is_dir()}
    return write_report(out, render_report(params, results, training, gpu), figures, study=STUDY,
                        run_name="report-gpu" if gpu else "report", results=[results, training])
