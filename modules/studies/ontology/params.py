"""The schema of params.yaml's ``ontology`` section (study 2), checked by :func:`modules.core.params.load`."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from modules.core.params import GpuRun, load, param, section
from modules.core.params import check_model_listed as check_listed
from modules.studies.ontology.data.dataset import DataConfig
from modules.studies.ontology.data.generator import HOPS
from modules.studies.ontology.probe_data import ProbeDataConfig


@dataclass(frozen=True)
class DataParams:
    seed: int = param(range=(0, 2**63 - 1))
    hops: int = param(choices=HOPS)
    items: int = param(range=(2, 10**6))          # fictional test items (half True)
    false_items: int = param(range=(2, 10**6))    # false-ontology items
    shots: int = param(range=(2, 64))             # solved examples per ontology
    onehop: int = param(range=(1, 10**6))
    onehop_shots: int = param(range=(0, 64))

    def config(self) -> DataConfig:
        return DataConfig(**asdict(self))


@dataclass(frozen=True)
class ProbeDataParams:
    seed: int = param(range=(0, 2**63 - 1))
    train_items: int = param(range=(1, 10**6))   # questions with the vocabulary's names
    test_items: int = param(range=(1, 10**6))    # questions with novel names

    def config(self) -> ProbeDataConfig:
        return ProbeDataConfig(**asdict(self))


@dataclass(frozen=True)
class OntologyParams:
    vocabulary: str = param()     # data/ontology_vocabulary.yaml (data.dvc)
    data: DataParams = param()
    validation: dict = param()    # the GX suite's settings
    models: tuple[str, ...] = param()  # names in params.yaml lms
    behaviour: dict = param()     # BehaviourConfig's
    heads: dict = param()         # HeadsConfig's
    probe_data: ProbeDataParams = param()
    probes: dict = param()        # ProbesConfig's
    onehop: dict = param()        # OnehopConfig's
    report_dir: str = param()
    gpu: GpuRun = param()         # the 7B run: same stages and settings, its own outputs and report

    def __post_init__(self):
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be a non-empty list of distinct names, got {list(self.models)}")


def ontology_params() -> OntologyParams:
    return load(OntologyParams, section("ontology"), "ontology")


def check_model_listed(params: OntologyParams, name: str) -> None:
    check_listed(name, "ontology", params.models, params.gpu)
