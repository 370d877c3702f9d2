"""On-disk activation cache: safetensors shards along the example axis plus ``metadata.json``.

Layout of a cache directory::

    metadata.json            model, tokenizer, dataset hash, sites, dtypes, shapes, shards
    shard-00000.safetensors  examples [0, b0) of every site
    shard-00001.safetensors  examples [b0, b1) ...

Site keys are ``"{site}.{layer}"`` or ``"{site}.{layer}.{head}"`` (``"resid_post.3"``,
``"head_out.2.1"``), or a bare ``"{site}"`` for layer-free tensors (``"logits"``). Layer and
head are 0-based; ``site`` is any identifier the capture code uses. Every tensor's first axis
is the example axis.

Writes go to a hidden sibling temp directory that is renamed into place only once
``metadata.json`` is written, so an interrupted write never leaves a directory that looks
finished (to DVC or to a later stage). Reads are lazy: a site is loaded, from every shard,
only when asked for; metadata, file sizes, shapes and dtypes are checked on the way.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

CACHE_FORMAT = 1
ENGINE_VERSION = "0.1.0"
METADATA_FILE = "metadata.json"
SITE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.\d+){0,2}$")
IDENTITY_FIELDS = ("model", "tokenizer", "dataset_hash", "engine_version")


class ActivationCacheError(ValueError):
    """A cache directory is missing, unfinished, corrupt, or built for other inputs."""


def site_key(site: str, layer: int | None = None, head: int | None = None) -> str:
    """Build a key: ``site_key("head_out", 2, 1) == "head_out.2.1"``."""
    if head is not None and layer is None:
        raise ValueError("site_key: a head needs a layer")
    key = ".".join(str(part) for part in (site, layer, head) if part is not None)
    if not SITE_KEY.match(key):
        raise ValueError(f"site key {key!r} must look like 'name', 'name.layer' or 'name.layer.head'")
    return key


def parse_site_key(key: str) -> tuple[str, int | None, int | None]:
    """Inverse of :func:`site_key`: ``"head_out.2.1" -> ("head_out", 2, 1)``."""
    if not SITE_KEY.match(key):
        raise ValueError(f"site key {key!r} must look like 'name', 'name.layer' or 'name.layer.head'")
    site, *rest = key.split(".")
    numbers = [int(r) for r in rest] + [None, None]
    return site, numbers[0], numbers[1]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class ActivationCacheWriter:
    """Stream batches of activations into a new cache; use as a context manager.

    >>> with ActivationCacheWriter(path, model="gpt2", tokenizer="gpt2", dataset_hash=h) as w:
    ...     for batch in batches:
    ...         w.add({"resid_post.0": acts0, "resid_post.1": acts1})

    Each ``add`` writes one shard. On an exception inside the ``with`` block the temp
    directory is deleted and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike, *, model: str, tokenizer: str, dataset_hash: str,
                 dtype: torch.dtype | None = None, extra: Mapping[str, Any] | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise ActivationCacheError(f"activation cache {self.path} already exists (pass overwrite=True to replace it)")
        self.dtype = dtype
        self.meta: dict[str, Any] = {
            "format": CACHE_FORMAT, "engine_version": ENGINE_VERSION, "model": str(model),
            "tokenizer": str(tokenizer), "dataset_hash": str(dataset_hash), "extra": dict(extra or {}),
            "n_examples": 0, "sites": {}, "shards": [],
        }
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self.closed = False

    def add(self, batch: Mapping[str, Tensor]) -> None:
        if self.closed:
            raise ActivationCacheError(f"activation cache writer for {self.path} is already closed")
        if not batch:
            raise ValueError("add: batch has no sites")
        for key in batch:
            parse_site_key(key)
        sizes = {key: t.shape[0] if t.ndim else None for key, t in batch.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"add: every site needs the same leading example axis, got {sizes}")
        sites = self.meta["sites"]
        if sites and set(batch) != set(sites):
            raise ValueError(f"add: sites {sorted(batch)} differ from the first batch's {sorted(sites)}")
        # dtype casts floating-point sites only (token ids stay integers).
        tensors = {key: t.detach().to("cpu", self.dtype if self.dtype and t.is_floating_point() else t.dtype)
                   .contiguous() for key, t in batch.items()}
        specs = {key: {"shape": list(t.shape[1:]), "dtype": _dtype_name(t.dtype)} for key, t in tensors.items()}
        for key, spec in specs.items():
            if sites and sites[key] != spec:
                raise ValueError(f"add: site {key} is {spec}, earlier batches were {sites[key]}")
        sites.update(specs)
        n = next(iter(sizes.values()))
        name = f"shard-{len(self.meta['shards']):05d}.safetensors"
        save_file(tensors, str(self.tmp / name))
        self.meta["shards"].append({"file": name, "n_examples": n, "bytes": (self.tmp / name).stat().st_size,
                                    "sha256": _file_sha256(self.tmp / name)})
        self.meta["n_examples"] += n

    def close(self) -> Path:
        """Write metadata and move the finished cache into place."""
        if not self.meta["shards"]:
            self.abort()
            raise ActivationCacheError(f"activation cache {self.path}: nothing was added")
        with open(self.tmp / METADATA_FILE, "w") as handle:
            json.dump(self.meta, handle, indent=1, sort_keys=True)
        # A directory cannot be os.replace'd over a non-empty one: move the old one aside first.
        old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self.closed = True
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.closed = True

    def __enter__(self) -> "ActivationCacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()


def save_activations(path: str | os.PathLike, activations: Mapping[str, Tensor], *, model: str, tokenizer: str,
                     dataset_hash: str, examples_per_shard: int | None = None, dtype: torch.dtype | None = None,
                     extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a dict of ``[n, ...]`` tensors as a cache, ``examples_per_shard`` examples a shard."""
    n = next(iter(activations.values())).shape[0] if activations else 0
    step = examples_per_shard or max(n, 1)
    if step < 1:
        raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
    with ActivationCacheWriter(path, model=model, tokenizer=tokenizer, dataset_hash=dataset_hash, dtype=dtype,
                               extra=extra, overwrite=overwrite) as writer:
        for start in range(0, n, step):
            writer.add({key: t[start:start + step] for key, t in activations.items()})
    return Path(path)


class ActivationCache(Mapping[str, Tensor]):
    """Read a cache lazily: ``cache["resid_post.3"]`` loads that site from every shard.

    ``expect`` checks identity fields (model, tokenizer, dataset_hash, engine_version) against
    the metadata; ``verify=True`` also checks each shard's sha256 (reads every byte once).
    """

    def __init__(self, path: str | os.PathLike, expect: Mapping[str, str] | None = None, verify: bool = False):
        self.path = Path(path)
        meta_path = self.path / METADATA_FILE
        if not self.path.is_dir():
            raise ActivationCacheError(f"activation cache {self.path} does not exist")
        if not meta_path.is_file():
            raise ActivationCacheError(f"activation cache {self.path} has no {METADATA_FILE}: unfinished or not a cache")
        try:
            self.metadata = json.loads(meta_path.read_text())
            shards, sites = self.metadata["shards"], self.metadata["sites"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ActivationCacheError(f"activation cache {meta_path} is corrupt: {err}") from None
        if self.metadata.get("format") != CACHE_FORMAT:
            raise ActivationCacheError(f"activation cache {self.path} has format {self.metadata.get('format')}, "
                                       f"this engine reads format {CACHE_FORMAT}")
        for field, want in (expect or {}).items():
            if field not in IDENTITY_FIELDS:
                raise ValueError(f"expect: unknown field {field!r}, allowed {IDENTITY_FIELDS}")
            if str(self.metadata.get(field)) != str(want):
                raise ActivationCacheError(f"activation cache {self.path} was built with {field}="
                                           f"{self.metadata.get(field)!r}, expected {want!r}")
        for shard in shards:
            file = self.path / shard["file"]
            if not file.is_file():
                raise ActivationCacheError(f"activation cache {self.path}: shard {shard['file']} is missing")
            if file.stat().st_size != shard["bytes"]:
                raise ActivationCacheError(f"activation cache {self.path}: shard {shard['file']} is "
                                           f"{file.stat().st_size} bytes, metadata says {shard['bytes']} (truncated?)")
            if verify and _file_sha256(file) != shard["sha256"]:
                raise ActivationCacheError(f"activation cache {self.path}: shard {shard['file']} fails its sha256 check")
        self.sites: dict[str, dict] = sites
        self.n_examples: int = self.metadata["n_examples"]

    def shape(self, key: str) -> tuple[int, ...]:
        return (self.n_examples, *self._spec(key)["shape"])

    def _spec(self, key: str) -> dict:
        if key not in self.sites:
            raise KeyError(f"site {key!r} not in activation cache {self.path}; it has {sorted(self.sites)}")
        return self.sites[key]

    def __getitem__(self, key: str) -> Tensor:
        spec = self._spec(key)
        parts = []
        for shard in self.metadata["shards"]:
            try:
                with safe_open(str(self.path / shard["file"]), framework="pt") as handle:
                    part = handle.get_tensor(key)
            except (SafetensorError, OSError) as err:
                raise ActivationCacheError(f"activation cache {self.path}: shard {shard['file']} is corrupt: {err}") from None
            if list(part.shape) != [shard["n_examples"], *spec["shape"]] or _dtype_name(part.dtype) != spec["dtype"]:
                raise ActivationCacheError(f"activation cache {self.path}: {key} in {shard['file']} is "
                                           f"{list(part.shape)} {part.dtype}, metadata says "
                                           f"[{shard['n_examples']}, *{spec['shape']}] {spec['dtype']}")
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __contains__(self, key: object) -> bool:  # without loading the tensor, unlike Mapping's default
        return key in self.sites

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, model={self.metadata['model']!r}, "
                f"n_examples={self.n_examples}, sites={len(self.sites)})")
