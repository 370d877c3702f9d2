"""The schemas of study 1's params.yaml sections (``logic.*``, ``logic_llm`` and ``logic_llm_gpu``), checked by
:func:`modules.core.params.load`. The training, circuit and LLM-study sections are the configs of
the code that uses them (TrainConfig, CircuitConfig, StudyConfig)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from modules.core.params import ParamsError, load, param, section
from modules.studies.logic.data.generator import MAX_DEPTH, MIN_DEPTH, RULE_ORDERS
from modules.studies.logic.data.syntax import PROMPT_ENDS

DEPTHS = (MIN_DEPTH, MAX_DEPTH)
SIZE = (0, 10**8)


class Section:
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TraceParams(Section):
    size: int = param(range=SIZE)
    depth: int = param()
    seed: int = param(range=(0, 2**63 - 1))


@dataclass(frozen=True)
class DataParams(Section):
    """Keys and types; the generator checks the values' meaning (depth, shares, operators) itself."""
    seed: int = param(range=(0, 2**63 - 1))
    depth: int = param()
    logop_share: float = param()
    operators: list[str] = param()
    prompt_end: str = param(choices=PROMPT_ENDS)
    rule_order: str = param(choices=RULE_ORDERS)
    query_twins: list[str] = param()
    traces: TraceParams = param()
    sizes: dict[str, int] = param()

    def __post_init__(self):
        if not self.sizes or any(n < 0 for n in self.sizes.values()):
            raise ValueError(f"sizes must map each split to a row count >= 0, got {self.sizes}")
        if not set(self.query_twins) <= set(self.sizes):
            raise ValueError(f"query_twins names splits not in sizes: {sorted(set(self.query_twins) - set(self.sizes))}")
        if self.traces.depth == self.depth:
            raise ParamsError(f"params.yaml logic.data.traces.depth must differ from logic.data.depth ({self.depth}): "
                              "a trace prompt would read as a task prompt")


@dataclass(frozen=True)
class BenchmarkParams(Section):
    seed: int = param(range=(0, 2**63 - 1))
    depth: int = param(range=DEPTHS)
    size: int = param(range=(1, 10**8))


@dataclass(frozen=True)
class ValidationSection(Section):
    tolerance: float = param(range=(1e-9, 1.0))


@dataclass(frozen=True)
class ActivationParams(Section):
    n_examples: int = param(range=(1, 10**8))
    sites: list[str] = param(choices=("resid_pre", "resid_post", "attn_out", "mlp_out"))
    positions: list[int] = param()
    batch_size: int = param(range=(1, 1 << 20))
    examples_per_shard: int = param(range=(1, 10**8))

    def __post_init__(self):
        if not self.sites or not self.positions:
            raise ValueError("sites and positions must be non-empty lists")


@dataclass(frozen=True)
class PairsParams(Section):
    seed: int = param(range=(0, 2**63 - 1))
    n_pairs: int = param(range=(1, 10**7))
    depth: int = param(range=DEPTHS)
    shots: int = param(range=(0, 64))
    prompt_end: str = param("answer", choices=PROMPT_ENDS, optional=True)
    rule_order: str = param("shuffled", choices=RULE_ORDERS, optional=True)


@dataclass(frozen=True)
class ReportParams(Section):
    dir: str = param()


@dataclass(frozen=True)
class TuneParams(Section):
    n_trials: int = param(range=(1, 10**6))
    timeout_s: float | None = param(range=(1.0, 1e9))
    trial_max_steps: int = param(range=(1, 10**8))
    storage: str = param()
    study_name: str = param()
    seed: int = param(range=(0, 2**32 - 1))
    space: dict[str, dict] = param()
    objective: str = param("val_exact_match", choices=("val_exact_match", "steps_to_perfect"))
    pruner: str = param("median", choices=("median", "hyperband", "none"))
    min_steps: int = param(250, range=(1, 10**8))  # Hyperband's smallest budget, in optimizer steps


@dataclass(frozen=True)
class LLMGPUParams(Section):
    """``logic_llm_gpu``: the study on one 7B model as it is, few-shot (pipelines/llm/dvc.yaml)."""
    model: str = param()   # a name in params.yaml lms
    prompts: PairsParams = param()
    study: dict = param()  # StudyConfig's, checked by the study


@dataclass(frozen=True)
class FinetuneParams(Section):
    data: dict = param()   # FinetuneData's, checked by the fine-tuning code
    train: dict = param()  # FinetuneConfig's
    models: dict = param()  # model name -> its own changes to train

    def train_for(self, name: str) -> dict:
        """``train`` with ``name``'s own changes."""
        own = self.models.get(name) or {}
        if not isinstance(own, dict):
            raise ParamsError(f"params.yaml logic_llm.finetune.models.{name} must be a mapping of train keys")
        return {**self.train, **own}


@dataclass(frozen=True)
class LLMParams(Section):
    """``logic_llm``: the study on real pretrained LMs in the main job (CPU)."""
    models: tuple[str, ...] = param()  # names in params.yaml lms
    prompts: PairsParams = param()
    fewshot: dict = param()   # FewShotConfig's
    finetune: FinetuneParams = param()
    study: dict = param()     # StudyConfig's
    report_dir: str = param()

    def __post_init__(self):
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be a non-empty list of distinct names, got {list(self.models)}")


SECTIONS = {"data": DataParams, "benchmark": BenchmarkParams, "validation": ValidationSection,
            "activations": ActivationParams, "pairs": PairsParams, "report": ReportParams, "tune": TuneParams}


def logic_section(name: str):
    """``logic.<name>`` of params.yaml, checked against its schema."""
    return load(SECTIONS[name], section("logic", name), f"logic.{name}")


def logic_seeds() -> list[int]:
    """``logic.seeds``: the models the per-seed stages train, evaluate and analyse."""
    seeds = section("logic", "seeds")
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds) \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"params.yaml logic.seeds must be a non-empty list of distinct ints >= 0, got {seeds!r}")
    return seeds


LLM_SECTIONS = {"logic_llm": LLMParams, "logic_llm_gpu": LLMGPUParams}


def llm_params(name: str = "logic_llm") -> LLMParams | LLMGPUParams:
    """``logic_llm`` (the main job's real LMs) or ``logic_llm_gpu`` (a 7B model), checked."""
    if name not in LLM_SECTIONS:
        raise ParamsError(f"unknown LLM section {name!r}; one of {', '.join(LLM_SECTIONS)}")
    return load(LLM_SECTIONS[name], section(name), name)


def check_seed(seed: int) -> int:
    """A per-seed stage's ``--seed``, which must be one of ``logic.seeds``."""
    seeds = logic_seeds()
    if seed not in seeds:
        raise ValueError(f"--seed {seed} is not in params.yaml logic.seeds {seeds}")
    return seed
