"""Atomic file and directory writes (an interrupted stage leaves nothing DVC would take as done), and
the readers of curated YAML files and Parquet table directories, with one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


def _shareable(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create private entries; outputs are meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, moving any old one aside first (a directory
    cannot be renamed over a non-empty one)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _shareable(tmp, 0o777)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling file path; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _shareable(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True))


def read_yaml_mapping(path: str | os.PathLike, keys: tuple[str, ...], error: type[Exception], missing: str) -> dict:
    """A curated YAML file that must be a mapping with exactly ``keys``; ``error`` (one line) when it
    is absent (``missing`` says how to get it), not valid YAML (with its place) or other keys."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no {missing}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict) or sorted(raw) != sorted(keys):
        raise error(f"{path}: expected the keys {', '.join(keys)}")
    return raw


def read_parquet_tables(data_dir: str | os.PathLike, names, hint: str) -> dict:
    """``{name: DataFrame}`` of ``data_dir/<name>.parquet``; a missing table is one line ending in ``hint``."""
    import pandas as pd

    data_dir = Path(data_dir)
    frames = {}
    for name in names:
        path = data_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"no {name} table at {path}; {hint}")
        frames[name] = pd.read_parquet(path)
    return frames
