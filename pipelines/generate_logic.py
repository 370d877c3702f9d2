"""Stage: generate the train/val/test splits of propositional-logic problems, and the trace
sequences that the routing recipe trains on beside them (when logic.data.traces.size > 0)."""
import argparse
import time
from pathlib import Path

from modules.data.logic import generate_traces, splits_from_params, write_splits, write_traces
from modules.io import atomic_dir
from modules.tracking.mlflow_tracking import data_hash, tracked_run
from pipelines._stage import LOGIC_STUDY, logic_seeds, params, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="artifacts/logic/data")
    args = parser.parse_args()
    logic_seeds()  # the first stage: a malformed seed list fails here, before any work
    config = params("logic", "data")
    traces = config["traces"]
    with tracked_run(LOGIC_STUDY, "generate", config):
        import mlflow

        start = time.perf_counter()
        try:
            frames = splits_from_params(config)
        except ValueError as error:  # the data module names the key; say where it lives
            raise ValueError(f"params.yaml logic.data.{error}") from None
        try:
            if traces["depth"] == config["depth"]:
                raise ValueError(f"depth must differ from logic.data.depth ({config['depth']}): a trace prompt "
                                 "would read as a task prompt")
            trace_frame = generate_traces(traces["seed"], traces["size"], traces["depth"], config["logop_share"],
                                          config["operators"], config["prompt_end"], rule_order=config["rule_order"])
        except ValueError as error:
            raise ValueError(f"params.yaml logic.data.traces.{error}") from None
        with atomic_dir(args.out) as tmp:
            write_splits(frames, tmp)
            if len(trace_frame):
                write_traces(trace_frame, Path(tmp) / "traces.parquet")
        mlflow.log_metrics({"generate_s": time.perf_counter() - start, "rows_traces": len(trace_frame),
                            **{f"rows_{split}": len(frame) for split, frame in frames.items()}})
        mlflow.log_param("data_hash.splits", data_hash([args.out]))


if __name__ == "__main__":
    run(main)
