"""What each of study 2's pipeline stages does, one function a stage: read inputs, run inside an
MLflow run of the study's experiment (``ontology-cot``), write outputs atomically. The scripts in
pipelines/ontology/ only parse paths and params and call these."""
from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow

from modules.core.io import atomic_dir, write_json
from modules.core.tracking import log_json, log_table, tracked_run
from modules.studies.ontology import STUDY
from modules.studies.ontology.params import OntologyParams, check_model_listed
from modules.analysis.report import write_report


def generate_data(params: OntologyParams, out: Path) -> dict[str, int]:
    """Items, shots, subtasks and the one-hop set at ``out`` (Parquet), from the curated vocabulary."""
    from modules.studies.ontology.data.dataset import generate, write_tables
    from modules.studies.ontology.vocabulary import load_vocabulary

    vocab = load_vocabulary(Path(params.vocabulary))
    config = params.data.config()
    with tracked_run(STUDY, "generate", {**params.data.__dict__, "vocabulary": params.vocabulary},
                     data_paths=[params.vocabulary]):
        start = time.perf_counter()
        frames = generate(config, vocab)
        with atomic_dir(out) as tmp:
            write_tables(frames, tmp)
        rows = {name: len(frame) for name, frame in frames.items()}
        mlflow.log_metrics({f"rows.{name}": float(n) for name, n in rows.items()}
                           | {"seconds": time.perf_counter() - start})
    return rows


def run_behaviour(params: OntologyParams, name: str, weights: Path | None, data: Path, out: Path) -> dict:
    """Greedy chain of thought and per-subtask next-word accuracy of the named model, with Wilson CIs."""
    from modules.lms.registry import load_named
    from modules.studies.ontology.behaviour import BehaviourConfig, behaviour
    from modules.studies.ontology.data.dataset import read_tables

    check_model_listed(params, name)
    config = BehaviourConfig.from_mapping(params.behaviour, complete=True)
    tables = read_tables(data)
    model, tokenizer, path = load_named(name, weights)
    with tracked_run(STUDY, f"behaviour-{name}", {"model": name, "path": str(path), **config.__dict__},
                     data_paths=[data]) as run:
        start = time.perf_counter()
        per_item, per_subtask, summary = behaviour(model, tokenizer, tables["items"], tables["subtasks"],
                                                   tables["shots"], config, progress=lambda m: print(m, flush=True))
        summary |= {"model": name, "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        metrics = {"cot_exact": summary["cot_exact"]["mean"], "label_accuracy": summary["label_accuracy"]["mean"],
                   "seconds": summary["seconds"]}
        metrics |= {f"subtask{s}.accuracy": v["mean"] for s, v in summary["subtasks"].items()}
        mlflow.log_metrics(metrics)
        log_json(summary, "behaviour.json")
        log_table(per_item, "items.csv")
        log_table(per_subtask, "subtasks.csv")
        with atomic_dir(out) as tmp:
            per_item.to_csv(tmp / "items.csv", index=False)
            per_subtask.to_csv(tmp / "subtasks.csv", index=False)
            write_json(summary, tmp / "behaviour.json")
    return summary


def report(params: OntologyParams, root: Path, out: Path, gpu: bool = False) -> Path:
    """reports/ontology/README.md (and its figures) from every model's outputs under ``root``: the
    models of ``models``, or with ``gpu`` those of ``gpu.models`` (the 7B run)."""

    from modules.studies.ontology.report import render_report

    results = {}
    for name in (params.gpu.models if gpu else params.models):
        path = root / name / "behaviour" / "behaviour.json"
        if not path.is_file():
            raise FileNotFoundError(f"no behaviour results at {path}; run the behaviour_ontology stage first")
        results[name] = {"behaviour": json.loads(path.read_text())}
        for part in ("heads", "onehop", "probes"):
            summary = root / name / part / "summary.json"
            if summary.is_file():
                results[name][part] = json.loads(summary.read_text())
    figures = {name: root / name / "heads" / "figures" for name in results if "heads" in results[name]}
    figures |= {f"{name}-{part}": root / name / part / "figures" for name in results
                for part in ("onehop", "probes") if part in results[name]}
    return write_report(out, render_report(params, results, gpu), figures, study=STUDY,
                        run_name="report-gpu" if gpu else "report", results=results)


def _subtask_inputs(params: OntologyParams, name: str, weights: Path | None, data: Path, behaviour_dir: Path):
    """The tables, the behaviour stage's per-subtask results (its path) and the loaded model, for the
    analyses that work on the subtasks the model gets right."""
    from modules.lms.registry import load_named
    from modules.studies.ontology.data.dataset import read_tables

    check_model_listed(params, name)
    per_subtask = behaviour_dir / "subtasks.csv"
    if not per_subtask.is_file():
        raise FileNotFoundError(f"no behaviour results at {per_subtask}; run the behaviour_ontology stage first")
    return read_tables(data), per_subtask, load_named(name, weights)


def run_heads(params: OntologyParams, name: str, weights: Path | None, data: Path, behaviour_dir: Path,
              out: Path, metrics: Path) -> dict:
    """Per-subtask head patching, answer writers, copy scores and the information-flow trace of the
    named model; figures and tensors in ``out`` and in the MLflow run ``heads-<model>``."""
    import pandas as pd

    from modules.analysis.outputs import log_results, write_results
    from modules.studies.ontology.heads import HeadsConfig, heads_figures, heads_metrics
    from modules.studies.ontology.heads import run_heads as analyse

    config = HeadsConfig.from_mapping(params.heads, complete=True)
    tables, per_subtask, (model, tokenizer, path) = _subtask_inputs(params, name, weights, data, behaviour_dir)
    with tracked_run(STUDY, f"heads-{name}", {"model": name, "path": str(path), **config.__dict__},
                     data_paths=[data, per_subtask]) as run:
        start = time.perf_counter()
        summary, tensors = analyse(model, tokenizer, tables, pd.read_csv(per_subtask), config,
                                   progress=lambda m: print(m, flush=True))
        summary |= {"model": name, "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        figures = heads_figures(summary, tensors, name)
        with atomic_dir(out) as tmp:
            write_results(tmp, summary, {}, tensors, figures)
        log_results(heads_metrics(summary), summary, {}, tensors, out / "figures")
        write_json(heads_metrics(summary), metrics)
    return summary


def validate_data(params: OntologyParams, data: Path, docs: Path, summary: Path):
    """The independent checker and the GX suites on every table; one line naming the table, the
    expectation and the offending rows on any violation."""
    from modules.studies.ontology.validation import validate_ontology
    from modules.studies.ontology.vocabulary import load_vocabulary
    from modules.validation import log_report

    vocab = load_vocabulary(Path(params.vocabulary))
    settings = {"hops": params.data.hops, **params.validation}
    with tracked_run(STUDY, "validate", settings, data_paths=[data]):
        report = validate_ontology(data, settings, docs, summary, vocab)
        log_report(report, docs)
    return report


def generate_probe_data(params: OntologyParams, out: Path) -> dict[str, int]:
    """The token-mixing probe set (word pairs in questions, labelled) at ``out/pairs.parquet``."""
    from modules.studies.ontology.probe_data import generate_probe_pairs, write_pairs
    from modules.studies.ontology.vocabulary import load_vocabulary

    vocab = load_vocabulary(Path(params.vocabulary))
    with tracked_run(STUDY, "generate-probes", {**params.probe_data.__dict__, "vocabulary": params.vocabulary},
                     data_paths=[params.vocabulary]):
        pairs = generate_probe_pairs(params.probe_data.config(), vocab)
        with atomic_dir(out) as tmp:
            write_pairs(pairs, tmp)
        rows = {f"{split}.{label}": int(n) for (split, label), n in pairs.groupby(["split", "label"]).size().items()}
        mlflow.log_metrics({f"rows.{key}": float(n) for key, n in rows.items()})
    return rows


def validate_probe_data(params: OntologyParams, data: Path, docs: Path, summary: Path):
    """The probe set's independent label check and GX suite; one line on any violation."""
    from modules.studies.ontology.probe_validation import validate_probe_data as validate
    from modules.studies.ontology.vocabulary import load_vocabulary
    from modules.validation import log_report

    vocab = load_vocabulary(Path(params.vocabulary))
    with tracked_run(STUDY, "validate-probes", {"vocabulary": params.vocabulary}, data_paths=[data]):
        report = validate(data, docs, summary, vocab)
        log_report(report, docs)
    return report


def run_probes(params: OntologyParams, name: str, weights: Path | None, data: Path, probe_data: Path,
               out: Path, metrics: Path) -> dict:
    """Per-layer linear and non-linear probes of the pair relation on the named model; the table, the
    figure and the bootstrap tensors in ``out`` and in the MLflow run ``probes-<model>``."""
    import pandas as pd

    from modules.analysis.outputs import log_results, write_results
    from modules.lms.registry import load_named
    from modules.studies.ontology.probes import ProbesConfig, probes_figure, probes_metrics
    from modules.studies.ontology.probes import run_probes as analyse

    check_model_listed(params, name)
    config = ProbesConfig.from_mapping(params.probes, complete=True)
    pairs_path = probe_data / "pairs.parquet"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"no probe set at {pairs_path}; run the generate_ontology_probes stage first")
    pairs = pd.read_parquet(pairs_path)
    shots = None
    if config.shots:
        from modules.studies.ontology.data.dataset import read_tables
        shots = read_tables(data)["shots"]
    model, tokenizer, path = load_named(name, weights)
    with tracked_run(STUDY, f"probes-{name}", {"model": name, "path": str(path), **config.__dict__},
                     data_paths=[pairs_path]) as run:
        start = time.perf_counter()
        summary, table, tensors = analyse(model, tokenizer, pairs, shots, config,
                                          progress=lambda m: print(m, flush=True))
        summary |= {"model": name, "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        figures = {"probes.png": probes_figure(table, summary, name)}
        with atomic_dir(out) as tmp:
            write_results(tmp, summary, {"probes.csv": table}, tensors, figures)
        log_results(probes_metrics(summary), summary, {"probes.csv": table}, tensors, out / "figures")
        write_json(probes_metrics(summary), metrics)
    return summary


def run_onehop(params: OntologyParams, name: str, weights: Path | None, data: Path, behaviour_dir: Path,
               out: Path, metrics: Path) -> dict:
    """The one-hop task's heads by patching, and whether they suffice for each subtask; the MLflow
    run ``onehop-<model>``."""
    import pandas as pd

    from modules.analysis.outputs import log_results, write_results
    from modules.studies.ontology.heads import HeadsConfig
    from modules.studies.ontology.onehop import OnehopConfig, onehop_figure, onehop_metrics
    from modules.studies.ontology.onehop import run_onehop as analyse

    config = OnehopConfig.from_mapping(params.onehop, complete=True)
    heads_config = HeadsConfig.from_mapping(params.heads, complete=True)
    tables, per_subtask, (model, tokenizer, path) = _subtask_inputs(params, name, weights, data, behaviour_dir)
    with tracked_run(STUDY, f"onehop-{name}", {"model": name, "path": str(path), **config.__dict__},
                     data_paths=[data, per_subtask]) as run:
        start = time.perf_counter()
        summary, tensors = analyse(model, tokenizer, tables, pd.read_csv(per_subtask), config, heads_config,
                                   progress=lambda m: print(m, flush=True))
        summary |= {"model": name, "seconds": time.perf_counter() - start, "mlflow_run_id": run.info.run_id}
        figures = {"onehop_heads.png": onehop_figure(tensors, name)} if "combined" in tensors else {}
        with atomic_dir(out) as tmp:
            write_results(tmp, summary, {}, tensors, figures)
        log_results(onehop_metrics(summary), summary, {}, tensors, out / "figures")
        write_json(onehop_metrics(summary), metrics)
    return summary
