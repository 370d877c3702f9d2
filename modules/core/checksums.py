"""sha256 checksums of an exported model's files, written beside them and verified at load time,
so that bytes damaged after export fail loudly instead of loading as a different model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKSUMS = "checksums.json"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def write_checksums(directory: str | Path, pattern: str = "*.safetensors") -> dict[str, str]:
    """Record the sha256 of every file matching ``pattern`` in ``directory/checksums.json``."""
    directory = Path(directory)
    sums = {f.name: sha256_file(f) for f in sorted(directory.glob(pattern))}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def read_checksums(directory: str | Path) -> dict[str, str]:
    """file name -> sha256 from ``directory/checksums.json``; empty where there is no record."""
    record = Path(directory) / CHECKSUMS
    return json.loads(record.read_text()) if record.is_file() else {}


def verify_checksums(directory: str | Path) -> None:
    """Raise a one-line ValueError when a file recorded in ``checksums.json`` is missing or differs;
    a directory without the record (an older export) passes."""
    directory = Path(directory)
    record = directory / CHECKSUMS
    for name, expected in read_checksums(directory).items():
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path} is missing (recorded in {record})")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(f"{path} is corrupted: sha256 {actual[:12]}... differs from the recorded "
                             f"{expected[:12]}... in {CHECKSUMS}")
