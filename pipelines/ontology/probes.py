"""Stage: a named model's token-mixing probes, linear and non-linear, on every layer."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.params import ontology_params
from modules.studies.ontology.stages import run_probes


def main() -> None:
    args = stage_args(__doc__, "data", "probe_data", "out", "metrics", model={"required": True},
                      weights={"default": None})
    summary = run_probes(ontology_params(), args.model, Path(args.weights) if args.weights else None,
                         Path(args.data), Path(args.probe_data), Path(args.out), Path(args.metrics))
    mlp = summary["probes"]["mlp"]["ood"]
    print(f"{args.model}: probes trained in {summary['seconds']:.0f} s; MLP peak macro-F1 on novel names "
          f"{mlp['peak_f1']:.3f} at hidden state {mlp['peak_layer']} of {summary['n_layers']}")


if __name__ == "__main__":
    run(main)
