import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modules.engine.sweeps import (SweepError, merge_shards, run_shards, shard_path, shard_ranges, sweep)

CELLS = [(layer, pos) for layer in range(3) for pos in range(7)]  # 21 cells


def effect(cells):
    """A deterministic per-cell computation: a row per cell from a fixed random map."""
    weights = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(0))
    return torch.stack([weights[layer, pos].tanh() * (pos + 1) for layer, pos in cells])


def effect_dict(cells):
    rows = effect(cells)
    return {"value": rows, "norm": rows.norm(dim=-1)}


def test_shard_ranges():
    ranges = shard_ranges(21, 4)
    assert [len(r) for r in ranges] == [6, 5, 5, 5]
    assert [i for r in ranges for i in r] == list(range(21))
    assert shard_ranges(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    for n_cells, n_shards in [(5, 0), (5, 6), (0, 1)]:
        with pytest.raises(ValueError, match="n_shards|at least one cell"):
            shard_ranges(n_cells, n_shards)


def test_merge_equals_single_pass(tmp_path):
    merged = sweep(CELLS, effect, tmp_path / "t", n_shards=4, progress=False)
    assert torch.equal(merged, effect(CELLS))
    merged = sweep(CELLS, effect_dict, tmp_path / "d", n_shards=5, progress=False)
    assert set(merged) == {"value", "norm"}
    assert torch.equal(merged["value"], effect(CELLS)) and torch.equal(merged["norm"], effect(CELLS).norm(dim=-1))
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.startswith(".")]  # no temp files left


def test_killed_sweep_resumes_without_recompute(tmp_path):
    calls, failed = [], []
    third = [CELLS[i] for i in shard_ranges(len(CELLS), 4)[2]]

    def flaky(cells):
        calls.append(cells)
        if cells == third and not failed:  # shard 2 of 4 dies the first time only
            failed.append(True)
            raise RuntimeError("killed")
        return effect(cells)

    with pytest.raises(RuntimeError, match="killed"):
        run_shards(CELLS, flaky, tmp_path, n_shards=4, progress=False)
    assert len(calls) == 3  # shards 0, 1 done; shard 2 raised
    assert shard_path(tmp_path, 1, 4).exists() and not shard_path(tmp_path, 2, 4).exists()
    with pytest.raises(SweepError, match=r"shards \[2, 3\] of 4 are missing"):
        merge_shards(CELLS, tmp_path, 4)
    computed = run_shards(CELLS, flaky, tmp_path, n_shards=4, progress=False)
    assert computed == [2, 3] and len(calls) == 5  # only the two unfinished shards ran again
    assert torch.equal(merge_shards(CELLS, tmp_path, 4), effect(CELLS))
    assert run_shards(CELLS, flaky, tmp_path, n_shards=4, progress=False) == [] and len(calls) == 5


def test_shard_i_of_n_jobs_and_ranks(tmp_path):
    # DVC foreach style: one job per shard index, in any order, then a merge step.
    for i in [3, 0, 2, 1]:
        assert run_shards(CELLS, effect, tmp_path / "jobs", 4, shards=[i], progress=False) == [i]
    assert torch.equal(merge_shards(CELLS, tmp_path / "jobs", 4), effect(CELLS))
    # Explicit rank/world: rank r takes shards r, r + W, ...
    assert run_shards(CELLS, effect, tmp_path / "ranks", 5, rank=1, world_size=2, progress=False) == [1, 3]
    assert run_shards(CELLS, effect, tmp_path / "ranks", 5, rank=0, world_size=2, progress=False) == [0, 2, 4]
    assert torch.equal(merge_shards(CELLS, tmp_path / "ranks", 5), effect(CELLS))
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        run_shards(CELLS, effect, tmp_path / "ranks", 5, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"shard indices \[7\] out of range 0..4"):
        run_shards(CELLS, effect, tmp_path / "ranks", 5, shards=[7])


def test_foreign_directory_and_bad_results(tmp_path):
    run_shards(CELLS, effect, tmp_path, 3, progress=False)
    with pytest.raises(SweepError, match="holds another sweep"):
        run_shards(CELLS[:-1], effect, tmp_path, 3)
    with pytest.raises(SweepError, match="holds another sweep"):
        merge_shards(CELLS, tmp_path, 4)
    with pytest.raises(SweepError, match="one row per cell"):
        run_shards(CELLS, lambda cells: torch.zeros(2), tmp_path / "b", 3)
    with pytest.raises(SweepError, match="tensor or a non-empty dict"):
        run_shards(CELLS, lambda cells: [1, 2], tmp_path / "c", 3)
    assert not list((tmp_path / "b").glob("*.safetensors"))
    with pytest.raises(SweepError, match="no sweep in"):
        merge_shards(CELLS, tmp_path / "never-run", 3)
    assert not (tmp_path / "never-run").exists()


def _worker(rank, world_size, root):
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world_size)
    try:
        done = run_shards(CELLS, effect, f"{root}/out", 5, progress=False)
        merged = sweep(CELLS, effect, f"{root}/out", 5, progress=False)  # all done: only barrier + merge
        with open(f"{root}/rank{rank}.json", "w") as handle:
            json.dump({"done": done, "equal": bool(torch.equal(merged, effect(CELLS)))}, handle)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sweep(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["done"] == [0, 2, 4] and reports[1]["done"] == [1, 3]
    assert all(r["equal"] for r in reports)
    assert torch.equal(merge_shards(CELLS, tmp_path / "out", 5), effect(CELLS))
