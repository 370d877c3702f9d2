"""What each stage of study 1's LLM half does: read inputs, run inside an MLflow run of the study's
experiment, write outputs atomically. The scripts in pipelines/logic/ only parse paths and params.

Models are named (params.yaml ``lms``). A stage's ``weights`` directory is the named model's own
(``artifacts/models/<name>`` for an imported model, its path for a local one) or a fine-tuned copy
of it; the name says how to load it (dtype, device map) and labels every output."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from modules.core.io import atomic_dir, atomic_write_text, write_json
from modules.core.params import ParamsError
from modules.core.tracking import data_hash, log_json, log_table, tracked_run
from modules.lms.registry import load_named, model_path, read_registry
from modules.studies.logic import STUDY
from modules.studies.logic.params import LLMGPUParams, LLMParams
from modules.analysis.report import write_report

WEIGHTS = ("base", "finetuned")


def _need(path: Path, what: str, stage: str) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"no {what} at {path}; run the {stage} stage first")
    return Path(path)


def check_model_listed(config: LLMParams, name: str) -> None:
    if name not in config.models:
        raise ParamsError(f"--model {name} is not in params.yaml logic_llm.models {list(config.models)}")


# ---------------------------------------------------------------- models

def import_model(name: str, out: Path, downloads: Path) -> dict:
    """Download, verify and convert a packaged model into ``out`` (an HF directory with a model card
    and a manifest of sha256 hashes); one MLflow run in the ``language-models`` experiment."""
    from modules.lms.packaged import import_packaged_model
    from modules.lms.registry import model_spec

    spec = model_spec(name, read_registry())
    params = {"name": name, "source": spec["source"], "dtype": spec.get("dtype"),
              **{f"package.{p['name']}": f"{p['version']} sha256:{p['sha256']}" for p in spec.get("packages", [])}}
    with tracked_run("language-models", f"import-{name}", params):
        import mlflow

        summary = import_packaged_model(name, spec, out, downloads, log=lambda line: print(line, flush=True))
        mlflow.log_metrics({f"seconds.{step}": float(s) for step, s in summary["seconds"].items()}
                           | {f"megabytes.{kind}": b / 1e6 for kind, b in summary["bytes"].items()}
                           | {"logits_max_abs_diff": float(summary["logits_max_abs_diff"])})
        log_json(summary, "import.json")
        mlflow.log_artifact(str(out / "README.md"))
    return summary


# ---------------------------------------------------------------- behaviour, fine-tuning

def fewshot(config: LLMParams, name: str, weights: Path, out: Path) -> pd.DataFrame:
    """The few-shot behaviour grid of the named model: ``behaviour.csv``, ``behaviour.md`` and the
    headline numbers in ``behaviour.json`` (first-token accuracy per cell)."""
    from modules.studies.logic.fewshot import FewShotConfig, behaviour_table, markdown

    check_model_listed(config, name)
    grid = FewShotConfig.from_mapping(config.fewshot, complete=True)
    model, tokenizer, path = load_named(name, weights)
    with tracked_run(STUDY, f"fewshot-{name}", {"model": name, "weights": str(path), **grid.as_dict()}):
        import mlflow

        table = behaviour_table(model, tokenizer, grid, model_name=name, progress=lambda m: print(m, flush=True))
        rows = table[table["query"] == "all"]
        metrics = {f"first_token.k{r.k}.{r.operator}": float(r.first_token) for r in rows.itertuples()}
        metrics |= {f"proof.k{r.k}.{r.operator}": float(r.proof) for r in rows.itertuples()}
        mlflow.log_metrics(metrics)
        log_table(table, "behaviour.csv")
        with atomic_dir(out) as tmp:
            table.to_csv(tmp / "behaviour.csv", index=False)
            (tmp / "behaviour.md").write_text(markdown(table) + "\n")
            write_json({"model": name, "config": grid.as_dict(), "metrics": metrics,
                        "mlflow_run_id": mlflow.active_run().info.run_id}, tmp / "behaviour.json")
    return table


def held_out(config: LLMParams, prompts: Path) -> set[str]:
    """Compact prompts that fine-tuning must never see: the study's and every cell of the grid's."""
    from modules.studies.logic.fewshot import FewShotConfig, held_out_prompts

    pairs = pd.read_parquet(_need(prompts, "prompts", "logic_llm_prompts"))
    study = set(pairs["prompt_logop"]) | set(pairs["prompt_linear"])
    return study | held_out_prompts(FewShotConfig.from_mapping(config.fewshot, complete=True))


def finetune(config: LLMParams, name: str, weights: Path, prompts: Path, out: Path, metrics: Path) -> dict:
    """Fine-tune the named model on the task (Lightning; MLflow logs the curves); ``out`` is an HF
    directory, ``metrics`` the summary with its validation history."""
    from modules.studies.logic import finetune as ft

    check_model_listed(config, name)
    data = ft.FinetuneData.from_mapping(config.finetune.data, complete=True)
    train_config = ft.FinetuneConfig.from_mapping(config.finetune.train_for(name), complete=True)
    path, _ = model_path(name, weights)
    train, val = ft.finetune_pairs(data, exclude=held_out(config, prompts))
    summary = ft.finetune(path, train, val, train_config, out, track=f"finetune-{name}",
                          params={"model": name, "data": data.__dict__}, progress=lambda m: print(m, flush=True))
    curve = pd.DataFrame(summary["history"])
    headline = {"model": name, **{k: summary[k] for k in ("steps", "stopped_by", "wall_s", "seconds_per_step",
                                                           "trainable_params", "n_train", "n_val")},
                "best_step": summary["best"]["step"], "val_first_token": summary["best"]["val_first_token"],
                "val_proof": summary["best"]["val_proof"], "mlflow_run_id": summary.get("mlflow_run_id", "")}
    write_json(headline, metrics)
    atomic_write_text(metrics.with_name(metrics.stem + "_curve.csv"), curve.to_csv(index=False))
    return summary


# ---------------------------------------------------------------- the study

def study(config: LLMParams | LLMGPUParams, name: str, weights: Path | None, label: str, prompts: Path,
          out: Path, metrics: Path):
    """Accuracy, head patching (outputs, queries, keys, values), attention families, necessity and
    sufficiency of the circuit, for the named model's ``label`` weights (base or finetuned)."""
    from modules.studies.logic.llm import StudyConfig, log_study, run_study, study_metrics, write_study

    if isinstance(config, LLMParams):
        check_model_listed(config, name)
    if label not in WEIGHTS:
        raise ValueError(f"--label must be one of {', '.join(WEIGHTS)}, got {label!r}")
    study_config = StudyConfig.from_mapping(config.study, complete=True)
    pairs = pd.read_parquet(_need(prompts, "prompts", "the prompts"))
    model, tokenizer, path = load_named(name, weights)
    title = name if label == "base" else f"{name} ({label})"
    with tracked_run(STUDY, f"llm-study-{name}-{label}", {"model": name, "weights": label, "path": str(path),
                                                           **config.study}, data_paths=[prompts]) as run:
        result = run_study(model, tokenizer, pairs, study_config, progress=lambda m: print(m, flush=True))
        result.summary["weights"] = label
        with atomic_dir(out) as tmp:
            write_study(result, tmp, title, run.info.run_id)
        write_json(study_metrics(result.summary), metrics)
        log_study(result, title, data_hash([prompts]), out / "figures")
    return result


# ---------------------------------------------------------------- reports

def gpu_report(study_dir: Path, out: Path) -> Path:
    """The 7B model's report (pipelines/llm/dvc.yaml)."""
    from modules.studies.logic.llm_report import render_report

    summary = json.loads(_need(study_dir / "summary.json", "study results", "logic_llm_gpu_study").read_text())
    return write_report(out, render_report(summary), {".": study_dir / "figures"}, study=STUDY,
                        run_name="llm-gpu-report", results=summary)


def lms_report(config: LLMParams, root: Path, out: Path) -> Path:
    """One report for every model of ``logic_llm.models``: behaviour, fine-tuning, and the study on
    the base and the fine-tuned weights."""
    from modules.studies.logic.llm_report import render_lms_report

    models = {}
    for name in config.models:
        base = root / name
        models[name] = {
            "behaviour": pd.read_csv(_need(base / "fewshot" / "behaviour.csv", f"{name}'s behaviour", "fewshot_logic_llm")),
            "finetune": json.loads(_need(base / "finetune.json", f"{name}'s fine-tuning", "finetune_logic_llm").read_text()),
            "curve": pd.read_csv(base / "finetune_curve.csv"),
            "studies": {label: json.loads(_need(base / f"study_{label}" / "summary.json", f"{name}'s {label} study",
                                                f"study_{label}_logic_llm").read_text()) for label in WEIGHTS}}
    figures = {f"{name}/{label}": root / name / f"study_{label}" / "figures" for name in config.models for label in WEIGHTS}
    return write_report(out, render_lms_report(models), figures, study=STUDY, run_name="llm-report",
                        results={name: entry["studies"] for name, entry in models.items()})
