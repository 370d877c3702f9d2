"""params.yaml, read and checked in one place.

Every section a stage reads is a frozen dataclass; :func:`load` checks a mapping against it and
gives one-line errors that name the key as params.yaml spells it:

* a key the dataclass does not have is refused (a typo never falls back to a default);
* a key it has is required, unless its field says ``optional`` (machine settings, not recipe);
* each value has its annotated type (int, float, bool, str, a list/tuple of them, a mapping, a
  nested section), and the field's ``range`` or ``choices`` when it has them;
* the dataclass's own ``__post_init__`` adds cross-key checks; its ValueErrors get the section's name.

    @dataclass(frozen=True)
    class Train:
        lr: float = param(3e-3, range=(1e-6, 1.0))
    config = load(Train, section("logic", "train"), "logic.train")
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


class ParamsError(ValueError):
    """params.yaml is unreadable, or a section breaks its schema; the message is one line."""


def param(default: Any = dataclasses.MISSING, *, range: tuple | None = None, choices: tuple | None = None,
          optional: bool = False, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with what :func:`load` checks: a closed ``range`` (low, high), allowed
    ``choices``, and whether params.yaml may leave it out (``optional``: the default applies)."""
    metadata = {"range": range, "choices": choices, "optional": optional}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def read_params(path: str | Path = PARAMS) -> dict:
    """The whole params file, or a one-line error for a missing or malformed one."""
    path = Path(path)
    try:
        node = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path.name}: no such file ({path})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ParamsError(f"{path.name}: invalid YAML{where}: {problem}") from None
    if not isinstance(node, dict):
        raise ParamsError(f"{path.name}: the top level must be a mapping of sections")
    return node


def section(*keys: str, path: str | Path = PARAMS) -> Any:
    """``section("logic", "train")`` -> that part of params.yaml, or a one-line error."""
    node: Any = read_params(path)
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"params.yaml: missing key {'.'.join(keys[:depth + 1])}")
        node = node[key]
    return node


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _coerce(value: Any, kind: Any, where: str, complete: bool = True) -> Any:
    """``value`` as type ``kind``, or a ParamsError naming ``where``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where, complete)
            except ParamsError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(kind):
        return load(kind, value, where, complete=complete)
    if kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml {where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params.yaml {where} must be an int, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params.yaml {where} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ParamsError(f"params.yaml {where} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params.yaml {where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or kind is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params.yaml {where} must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"params: no rule for type {_type_name(kind)} at {where}")


def _check_field(value: Any, meta: Mapping, where: str) -> None:
    low_high, choices = meta.get("range"), meta.get("choices")
    what = "an int" if isinstance(value, int) and not isinstance(value, bool) else "a number"
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if choices is not None and v not in choices:
            raise ParamsError(f"params.yaml {where} must be one of {list(choices)}, got {value!r}")
        if low_high is not None and v is not None and not low_high[0] <= v <= low_high[1]:
            raise ParamsError(f"params.yaml {where} must be {what} in [{low_high[0]}, {low_high[1]}], got {value!r}")


def load(cls: type, mapping: Any, where: str, *, complete: bool = True):
    """``mapping`` checked against dataclass ``cls`` (see the module docstring). ``complete=False``
    lets any key fall back to its default (programmatic use, not params.yaml)."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"params.yaml {where} must be a mapping of keys, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ParamsError(f"params.yaml {where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    required = [name for name, f in fields.items() if not f.metadata.get("optional")
                and (complete or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))]
    missing = [name for name in required if name not in mapping]
    if missing:
        raise ParamsError(f"params.yaml {where}: missing key(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in mapping.items():
        key = f"{where}.{name}"
        values[name] = _coerce(value, hints[name], key, complete)
        _check_field(values[name], fields[name].metadata, key)
    try:
        return cls(**values)
    except ParamsError:
        raise
    except (ValueError, TypeError) as error:
        raise ParamsError(f"params.yaml {where}: {error}") from None


def apply_overrides(tree: dict, assignments: list[str], root: str, allowed: tuple[str, ...]) -> dict:
    """``tree`` (params.yaml's ``root`` section) with each ``root.<allowed>.key=value`` applied, the
    value read as YAML: the ``--set`` option of the benchmarks and experiments."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        path = key.split(".")
        if not sep or len(path) < 3 or path[0] != root or path[1] not in allowed:
            spelled = " or ".join(f"{root}.{name}.KEY=VALUE" for name in allowed)
            raise ValueError(f"--set takes {spelled}, got {assignment!r}")
        node = tree
        for part in path[1:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set: {'.'.join(path[:-1])} is not a params.yaml section")
            node = node[part]
        node[path[-1]] = yaml.safe_load(value)
    return tree


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """A study's run on 7B models (its stages in pipelines/llm/dvc.yaml, for GPU hosts): names of
    params.yaml lms, each loaded from its local path, and the run's own report directory."""
    models: tuple[str, ...] = param()
    report_dir: str = param()

    def __post_init__(self):
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"gpu.models must be distinct names of params.yaml lms, got {list(self.models)}")


def check_model_listed(name: str, section_name: str, models, gpu: GpuRun) -> None:
    """One line unless ``name`` is in the study's ``models`` or its ``gpu.models``."""
    if name not in models and name not in gpu.models:
        raise ParamsError(f"--model {name} is not in params.yaml {section_name}.models {list(models)} "
                          f"or {section_name}.gpu.models {list(gpu.models)}")
