"""Shared fixtures: tiny random GPT-2 / Llama / Mistral models (GQA, a Mistral sliding window
shorter than the test prompts) saved to disk and loaded back through ``load_model``."""
from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: each (and every stage subprocess it starts, which
    # inherits this) takes one thread, as two-thread processes on both would oversubscribe the cores
    # and spin-wait in OpenMP. Set before torch is first imported.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from modules.engine import tiny  # noqa: E402
from modules.engine.adapters import load_model  # noqa: E402

ARCHS = ("gpt2", "llama", "mistral")
VOCAB = 64
# Larger-than-default initial weights so that single-head patches move the logits well above
# float32 noise; a sliding window (Mistral) shorter than the 8-token test prompts.
MODEL_KWARGS = dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, init_std=0.15)
ARCH_KWARGS = {"mistral": dict(sliding_window=5)}


# `make test` runs two pytest-xdist workers with --dist loadgroup: every test of a file goes to one
# worker, so module- and session-scoped fixtures (a tiny pipeline's `dvc repro`) run once. Groups are
# handed out longest first (xdist gives a worker its next group when it is nearly idle): the end-to-end
# pipeline runs and the real-LM files take most of the suite's time, and started last they would
# finish alone.
LONGEST_FIRST = ["tests/pipelines/test_pipeline_e2e.py", "tests/pipelines/test_study3_e2e.py",
                 "tests/lms/test_behaviour.py", "tests/pipelines/test_routing_recipe.py",
                 "tests/pipelines/test_study2_e2e.py", "tests/lms/test_engine_real.py",
                 "tests/pipelines/test_bad_input.py", "tests/studies/logic/test_logic_llm_pipeline.py",
                 "tests/lms/test_gpu_entry.py", "tests/studies/logic/training/test_logic_training.py"]


def group_of(item) -> str:
    return str(item.path.relative_to(item.config.rootpath))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into each test's group
def pytest_collection_modifyitems(config, items):
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item)))
    items.sort(key=lambda item: rank.get(group_of(item), len(rank)))  # stable: file order kept within


def random_ids(batch: int, seq: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    """Token ids [batch, seq] drawn from the tiny vocabulary (the last id, <eos>, excluded)."""
    return torch.randint(0, vocab - 1, (batch, seq), generator=torch.Generator().manual_seed(seed))


def gpt2_hidden_states(n: int, seq: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(ids [n, seq], hidden_states) of a tiny random GPT-2 (2 layers, width 32): plain
    activations for the tests of tensor-level tools (cache, probes)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 50, (n, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ids, model(ids, output_hidden_states=True).hidden_states


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory ``tiny_model(arch, **config) -> (model, tokenizer)``, built once per session: the
    random model and its tokenizer are saved with save_pretrained and read back by load_model."""
    built = {}

    def make(arch: str, **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in built:
            kwargs = {**MODEL_KWARGS, **ARCH_KWARGS.get(arch, {}), **overrides}
            attn = kwargs.pop("attn_implementation", "eager")
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            tiny.tiny_model(arch, **kwargs).save_pretrained(path)
            tiny.word_tokenizer(kwargs["vocab_size"]).save_pretrained(path)
            built[key] = load_model(path, attn_implementation=attn)
        return built[key]
    return make


@pytest.fixture
def make_ids():
    """``make_ids(batch, seq, seed=0)``: random token ids for the tiny models."""
    return random_ids


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    spin-waiting makes them up to ~100x slower: run such tests on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
