"""Sharded, resumable sweeps: split cells into shards, compute only missing shards, merge.

A sweep is a list of cells (any descriptions with a stable ``repr``: tuples of ints and
strings, say) and a function ``fn(cells_chunk) -> Tensor | dict[str, Tensor]`` whose
tensors have one row per cell. Shards are contiguous, near-equal chunks of the cell list,
so the split depends only on ``len(cells)`` and ``n_shards``. Each shard is saved
atomically to ``out_dir/shard-{i:05d}-of-{n:05d}.safetensors``; a rerun skips shards whose
file exists, so a sweep killed midway resumes where it stopped.

Ways to spread the work:
- one process: ``sweep(cells, fn, out_dir, n_shards)``;
- DVC ``foreach`` or a job array: ``run_shards(..., shards=[i])`` per job, then ``merge_shards``;
- torch.distributed (``torchrun``, or Lightning Fabric with ``strategy="ddp"``, which
  initialises it): rank r takes shards r, r + W, ...; ``sweep`` waits on a barrier and
  every rank returns the merged result (``out_dir`` must be on a shared filesystem).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from modules.core.io import atomic_file, atomic_write_text

log = logging.getLogger(__name__)

Result = Tensor | dict[str, Tensor]
SINGLE = "result"  # key under which a plain-tensor result is stored


class SweepError(ValueError):
    """A sweep directory belongs to another sweep, or a shard is missing or malformed."""


def shard_ranges(n_cells: int, n_shards: int) -> list[range]:
    """Contiguous near-equal ranges of cell indices; the first ``n_cells % n_shards`` get one more."""
    if n_cells < 1:
        raise ValueError(f"a sweep needs at least one cell, got {n_cells}")
    if not 1 <= n_shards <= n_cells:
        raise ValueError(f"n_shards must be in 1..{n_cells} (the number of cells), got {n_shards}")
    size, extra = divmod(n_cells, n_shards)
    starts = [i * size + min(i, extra) for i in range(n_shards + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(n_shards)]


def cells_fingerprint(cells: Sequence[Hashable]) -> str:
    return hashlib.sha256(repr(list(cells)).encode()).hexdigest()[:16]


def shard_path(out_dir: str | os.PathLike, index: int, n_shards: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}-of-{n_shards:05d}.safetensors"


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_manifest(out_dir: Path, cells: Sequence[Hashable], n_shards: int, create: bool = True) -> str:
    """Create or check ``manifest.json`` so shards of another sweep are never mixed in."""
    fingerprint = cells_fingerprint(cells)
    manifest = {"cells_sha256": fingerprint, "n_cells": len(cells), "n_shards": n_shards}
    path = out_dir / "manifest.json"
    if not path.exists() and not create:
        raise SweepError(f"no sweep in {out_dir} (manifest.json missing); run its shards first")
    if path.exists():
        found = json.loads(path.read_text())
        if found != manifest:
            raise SweepError(f"sweep directory {out_dir} holds another sweep ({found}), not {manifest}; "
                             f"use a new out_dir or delete it")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(manifest, sort_keys=True))  # identical from every rank
    return fingerprint


def _save_shard(path: Path, result: Result, n_rows: int, fingerprint: str) -> None:
    tensors = {SINGLE: result} if isinstance(result, Tensor) else dict(result) if isinstance(result, Mapping) else {}
    if not tensors or not all(isinstance(t, Tensor) for t in tensors.values()):
        raise SweepError(f"fn must return a tensor or a non-empty dict of tensors, got {type(result).__name__}")
    for key, t in tensors.items():
        if t.ndim == 0 or t.shape[0] != n_rows:
            raise SweepError(f"fn returned {key} with shape {tuple(t.shape)} for {n_rows} cells: "
                             f"the first axis must have one row per cell")
    kind = "tensor" if isinstance(result, Tensor) else "dict"
    with atomic_file(path) as tmp:
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp),
                  metadata={"cells_sha256": fingerprint, "kind": kind})


def run_shards(cells: Sequence[Hashable], fn: Callable[[list], Result], out_dir: str | os.PathLike, n_shards: int,
               shards: Iterable[int] | None = None, rank: int | None = None, world_size: int | None = None,
               progress: bool = True) -> list[int]:
    """Compute the missing shards this process owns; return the indices it computed.

    ``shards`` picks shards explicitly (shard i of N for a DVC ``foreach`` job). Otherwise
    rank r of W takes shards r, r + W, ...; rank and world size come from torch.distributed
    when it is initialised, else (0, 1).
    """
    out_dir = Path(out_dir)
    ranges = shard_ranges(len(cells), n_shards)
    fingerprint = _check_manifest(out_dir, cells, n_shards)
    if shards is None:
        default_rank, default_world = dist_rank_world()
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        shards = range(rank, n_shards, world_size)
    shards = list(shards)
    if bad := [i for i in shards if not 0 <= i < n_shards]:
        raise ValueError(f"shard indices {bad} out of range 0..{n_shards - 1}")
    todo = [i for i in shards if not shard_path(out_dir, i, n_shards).exists()]
    log.info("sweep %s: %d of %d owned shards already done, %d to compute",
             out_dir, len(shards) - len(todo), len(shards), len(todo))
    for i in tqdm(todo, desc=f"sweep {out_dir.name}", unit="shard", disable=not progress):
        start = time.perf_counter()
        chunk = [cells[j] for j in ranges[i]]
        _save_shard(shard_path(out_dir, i, n_shards), fn(chunk), len(chunk), fingerprint)
        log.info("sweep %s: shard %d/%d (cells %d-%d) done in %.2fs", out_dir, i + 1, n_shards,
                 ranges[i].start, ranges[i].stop - 1, time.perf_counter() - start)
    return todo


def merge_shards(cells: Sequence[Hashable], out_dir: str | os.PathLike, n_shards: int) -> Result:
    """Concatenate every shard's rows in cell order; a missing or foreign shard is an error."""
    out_dir = Path(out_dir)
    shard_ranges(len(cells), n_shards)
    fingerprint = _check_manifest(out_dir, cells, n_shards, create=False)
    if missing := [i for i in range(n_shards) if not shard_path(out_dir, i, n_shards).exists()]:
        raise SweepError(f"sweep {out_dir}: shards {missing} of {n_shards} are missing; run them before merging")
    parts: dict[str, list[Tensor]] = {}
    kinds = set()
    for i in range(n_shards):
        with safe_open(str(shard_path(out_dir, i, n_shards)), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("cells_sha256") != fingerprint:
                raise SweepError(f"sweep {out_dir}: shard {i} was computed for other cells")
            kinds.add(meta.get("kind"))
            for key in handle.keys():
                parts.setdefault(key, []).append(handle.get_tensor(key))
    if len(kinds) != 1 or any(len(p) != n_shards for p in parts.values()):
        raise SweepError(f"sweep {out_dir}: shards disagree on their result keys")
    merged = {key: torch.cat(p) for key, p in parts.items()}
    return merged[SINGLE] if kinds == {"tensor"} else merged


def sweep(cells: Sequence[Hashable], fn: Callable[[list], Result], out_dir: str | os.PathLike, n_shards: int,
          progress: bool = True) -> Result:
    """Run this process's share of the missing shards, wait for the other ranks, merge."""
    run_shards(cells, fn, out_dir, n_shards, progress=progress)
    if dist_rank_world()[1] > 1:
        dist.barrier()
    return merge_shards(cells, out_dir, n_shards)

