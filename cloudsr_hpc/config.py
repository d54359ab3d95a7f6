"""Typed, validated YAML configuration.

Every config file maps onto a tree of dataclasses.  ``load(cls, path)`` reads the file with
``yaml.safe_load``, applies ``--set key.sub=value`` overrides, and converts the result with
:func:`build`, which rejects unknown keys and ill-typed values with an error naming the file
and the dotted key (``configs/stage1.yaml: train.lr: expected float, got 'fast'``).
"""
from __future__ import annotations

import dataclasses
import operator
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
# The project's configs/ lives beside the package (editable install / checkout); a site may point
# CLOUDSR_CONFIG_DIR at its own copy.
CONFIG_DIR = Path(os.environ.get("CLOUDSR_CONFIG_DIR", PACKAGE_ROOT.parent / "configs"))


def config_path(name: str | Path) -> Path:
    """Resolve a config name: an existing path wins, else the packaged ``configs/`` copy."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"{name}: config file not found (looked in . and {CONFIG_DIR})")


def read_yaml(path: str | Path) -> dict:
    """``yaml.safe_load`` a mapping, turning parse errors into one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "1e-4" as a string (no dot); accept it as the float users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and not value.isalpha() else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] | None, source: str = "--set") -> dict:
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source} {text}: '{k}' is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


T = typing.TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: value {value!r} matches none of "
                          f"{', '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices and isinstance(value, int) and str(value) in choices:
            # YAML reads `stages: 2` (or --set stages=2) as a number; the choice is the name "2"
            value = str(value)
        elif value not in choices and isinstance(value, str) and value.isdigit() and int(value) in choices:
            value = int(value)  # and `stage: "1"` quoted is still Stage 1
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]")
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Convert a mapping into dataclass ``cls``, validating every key; ``where`` prefixes errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    sep = "." if where and not where.endswith(": ") else ""
    migrate = getattr(cls, "migrate", None)  # renamed/moved keys of older files -> today's, before checking
    if migrate is not None:
        data = migrate(dict(data), f"{where}{sep}")
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}{sep}{key}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}{sep}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}{sep}{name}: required key missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where.rstrip(": ") or cls.__name__)
    return obj


def load(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Read ``path`` (YAML), apply ``overrides`` and build ``cls``; errors name the file and key."""
    p = config_path(path)
    data = apply_overrides(read_yaml(p), overrides)
    return build(cls, data, f"{p}: ")


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-safe data (for provenance attributes and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def require(cond: bool, where: str, msg: str) -> None:
    """Raise a :class:`ConfigError` naming ``where`` unless ``cond`` holds (used by ``validate``)."""
    if not cond:
        raise ConfigError(f"{where}: {msg}")


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _holds(value: Any, rule: str) -> bool:
    """``value`` against ``">= 1"``, ``"> 0"`` or an interval ``"[0, 1)"`` (NaN never holds)."""
    r = rule.replace(" ", "")
    if r[0] in "[(":
        lo, hi = (float(x) for x in r[1:-1].split(","))
        return (value >= lo if r[0] == "[" else value > lo) and (value <= hi if r[-1] == "]" else value < hi)
    op = ">=" if r.startswith(">=") else "<=" if r.startswith("<=") else r[0]
    return _OPS[op](value, float(r[len(op):]))


def key_of(where: str, key: str) -> str:
    """``configs/stage1.yaml: train`` + ``val_every`` -> ``configs/stage1.yaml: train.val_every``."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def check_ranges(where: str, obj: Any, **rules: str) -> None:
    """Each named field of ``obj`` within its rule (``val_every=">= 1"``, ``ema_decay="[0, 1)"``):
    a value out of range is refused here, naming the key and the allowed range, instead of a
    ZeroDivisionError mid-run or a silently different network."""
    for key, rule in rules.items():
        value = getattr(obj, key)
        if not _holds(value, rule):
            allowed = f"in {rule}" if rule[0] in "[(" else rule
            raise ConfigError(f"{key_of(where, key)} = {value!r}: must be {allowed}")
