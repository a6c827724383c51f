"""Validated dataclass configs from YAML, with `--set a.b=c` overrides.

Every config class is a dataclass whose fields carry a one-line help in
`field(metadata={"help": ...})` and whose `__post_init__` validates values. This module
turns nested dicts into those dataclasses with errors that name the key (`sampling.top_p`)
and, for a key that does not exist, suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def help_field(default: Any = dataclasses.MISSING, help: str = "", stage: str | tuple[str, ...] | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a one-line help text (shown in the config reference).

    `stage` names the stage (or stages) whose key includes this field (see `stage_fields`): changing
    the value makes that stage's earlier work stale."""
    metadata = {"help": help, "stage": stage}
    if isinstance(default, (list, dict)):
        factory = type(default)
        value = default
        return dataclasses.field(default_factory=lambda: factory(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def stage_fields(obj: Any, stage: str) -> dict[str, Any]:
    """The fields of config `obj` that declare `stage`, as canonical plain data."""
    def declares(f: dataclasses.Field) -> bool:
        tags = f.metadata.get("stage")
        return stage == tags or (isinstance(tags, tuple) and stage in tags)

    return canonical_dict({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if declares(f)})


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in args)
    if args:
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting ints to floats where expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping of keys, got {value!r}")
        return from_dict(tp, value, prefix=where)
    if tp is Any:
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single stop string is a list of one
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config annotation {tp!r} at {where}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(key, bool):
            raise ValueError(
                f"{prefix or 'recipe'}: a key reads as {key}: YAML takes a bare on/off/yes/no key for a "
                f"boolean; quote it, or use the option's real name.{_suggest(str(key).lower(), sorted(fields))}"
            )
        if key not in fields:
            raise ValueError(f"{where}: unknown key.{_suggest(str(key), sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], where)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = ", ".join(f"{prefix}.{m}" if prefix else m for m in missing)
        raise ValueError(f"{where}: required key is missing ({fields[missing[0]].metadata.get('help', '')})")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # __post_init__ messages name the field without the prefix; add it.
        msg = str(exc)
        if prefix and not msg.startswith(prefix):
            msg = f"{prefix}.{msg}"
        raise ValueError(msg) from None


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain dicts and lists (for YAML/JSON)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def canonical_dict(obj: Any) -> Any:
    """A config as plain data that compares equal across runs (for "already done" stamps)."""
    if isinstance(obj, dict):
        obj = {k: to_dict(v) for k, v in obj.items()}
    return json.loads(json.dumps(to_dict(obj), sort_keys=True, default=str))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sampling.temperature=0.2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _optional_dataclass(tp: Any) -> type | None:
    """The dataclass of a section annotated `Section` or `Section | None`, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"recipe: {p} does not exist (give the path of a YAML recipe, e.g. prompts/demo/recipe.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"recipe: {p}{line} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe: {p} must be a YAML mapping of sections (seeds, template, teacher, ...)")
    return data


def reference(cls: type, prefix: str = "", seen: dict[type, str] | None = None) -> list[tuple[str, str, str, str]]:
    """Rows (key, type, default, help) describing every field of a config class, recursively.
    A section of a class already described (a second teacher block) is one row naming the first."""
    rows = []
    seen = {} if seen is None else seen
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        section = _optional_dataclass(tp)
        if section is not None and section in seen:
            default = "None" if f.default is None else "required"
            rows.append((key, f"a `{seen[section]}` block", default, f.metadata.get("help", "")))
            continue
        if section is not None:
            seen[section] = key
            rows.extend(reference(section, key, seen))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):  # a list of sections: each entry's keys
            rows.extend(reference(item, f"{key}[]", seen))
    return rows
