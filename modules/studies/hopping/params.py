"""The schema of params.yaml's ``hopping`` section (study 3), checked by :func:`modules.core.params.load`."""
from __future__ import annotations

from dataclasses import dataclass

from modules.core.params import GpuRun, load, param, section
from modules.core.params import check_model_listed as check_listed

GRAPH_MODEL = "graph"   # the from-scratch model's name in ``models``; every other name is in params.yaml lms


@dataclass(frozen=True)
class TuneParams:
    n_trials: int = param(range=(1, 10**4))
    trial_max_steps: int = param(range=(1, 10**8))
    storage: str = param()          # any SQLAlchemy URL; a relative sqlite path is read from the project root
    study_name: str = param()
    objective: str = param(choices=("atomic", "train_twohop", "test_id", "test_ood"))
    space: dict = param()
    use_tuned: bool = param()       # train with the best trial's values instead of train's


@dataclass(frozen=True)
class EvaluateParams:
    max_new_tokens: int = param(range=(1, 256))
    batch_size: int = param(range=(1, 4096))
    graph_splits: tuple[str, ...] = param()   # the fictional graph's splits the analyses read
    max_queries: int = param(range=(0, 10**7))  # the first n queries of the set; 0: all

    def __post_init__(self):
        bad = [s for s in self.graph_splits if s not in ("train", "test_id", "test_ood")]
        if bad or not self.graph_splits:
            raise ValueError(f"evaluate.graph_splits must be a non-empty subset of [train, test_id, test_ood], "
                             f"got {list(self.graph_splits)}")


@dataclass(frozen=True)
class HoppingParams:
    world: str = param()            # data/hopping_world.yaml (data.dvc)
    graph: dict = param()           # GraphConfig's
    validation: dict = param()      # the GX suites' settings
    train: dict = param()           # GraphTrainConfig's
    seed: int = param(range=(0, 2**31 - 1))
    tune: TuneParams = param()
    models: tuple[str, ...] = param()   # pretrained LMs (names in params.yaml lms); the graph model always runs
    evaluate: EvaluateParams = param()
    backpatch: dict = param()       # BackpatchConfig's
    layers: dict = param()          # LayersConfig's, for the pretrained models
    graph_layers: dict = param()    # overrides of ``layers`` for the from-scratch model
    report_dir: str = param()
    gpu: GpuRun = param()   # the 7B run: same stages and settings, its own outputs and report

    def __post_init__(self):
        if GRAPH_MODEL in self.gpu.models:
            raise ValueError(f"gpu.models must be names of params.yaml lms, got {list(self.gpu.models)}")
        if len(set(self.models)) != len(self.models) or GRAPH_MODEL in self.models:
            raise ValueError(f"models must be distinct names of params.yaml lms (the {GRAPH_MODEL!r} model always "
                             f"runs), got {list(self.models)}")


def hopping_params() -> HoppingParams:
    return load(HoppingParams, section("hopping"), "hopping")


def check_model_listed(params: HoppingParams, name: str) -> None:
    if name != GRAPH_MODEL:
        check_listed(name, "hopping", params.models, params.gpu)
