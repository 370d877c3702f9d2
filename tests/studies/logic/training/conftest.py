import pytest

from modules.studies.logic.data import generate_splits


@pytest.fixture(scope="session")
def small_splits():
    return generate_splits(seed=7, sizes={"train": 600, "val": 120, "test": 200}, depth=3)


TINY = dict(n_embd=24, n_head=3, n_layer=2, batch_size=32, max_steps=12, val_every=6, val_batch_size=64,
            lr=3e-3, warmup_frac=0.1)
