"""Data held to the SDK's own types, strictly: `drift(kind, data)` lists how they differ.

The SDK's models take unknown keys silently and read missing optional ones as None, and its param
TypedDicts are never checked at run time, so data that drifted from the API would still pass. Here
data is validated with pydantic (not the SDK's lenient `construct`) and walked with its type: a key
the type does not declare is drift too. The contract test holds the emulator's answers to this; the
emulator holds the bodies it is sent to it.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from typing import Any, NotRequired, Required, get_args, get_origin

import pydantic
from typing_extensions import is_typeddict

# Building an adapter costs milliseconds: one per type, kept.
_adapters: dict[int, pydantic.TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> pydantic.TypeAdapter[Any]:
    found = _adapters.get(id(kind))
    if found is None:
        found = _adapters[id(kind)] = pydantic.TypeAdapter(kind)
    return found


def invalid(kind: Any, data: Any) -> str | None:
    """Why pydantic refuses `data` as `kind`, or None."""
    try:
        _adapter(kind).validate_python(data)
    except pydantic.ValidationError as exc:
        return str(exc)
    return None


def _strip(kind: Any) -> Any:
    """The type under Annotated, Required and NotRequired wrappers."""
    while get_origin(kind) in (typing.Annotated, Required, NotRequired):
        kind = get_args(kind)[0]
    return kind


def _fields(kind: Any) -> dict[str, Any]:
    """The keys a model or TypedDict declares (by the name the JSON uses), with their types."""
    if is_typeddict(kind):
        return dict(typing.get_type_hints(kind, include_extras=True))
    return {(f.alias or name): f.annotation for name, f in kind.model_fields.items()}


def undeclared(kind: Any, data: Any, path: str = "$") -> list[str]:
    """Where `data` holds keys `kind` does not declare, walking models, TypedDicts, unions (the
    member the data fits best), lists, iterables and dicts together with the data. Items of an
    `Iterable` are validated here too: pydantic validates those only when they are iterated."""
    kind = _strip(kind)
    origin = get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in get_args(kind) if m is not type(None)]
        if data is None:
            return []
        fits = [undeclared(m, data, path) for m in members if invalid(m, data) is None]
        if not fits:
            return [f"{path}: fits no member of {kind}"]
        return min(fits, key=len)
    if isinstance(kind, type) and (is_typeddict(kind) or issubclass(kind, pydantic.BaseModel)):
        if not isinstance(data, dict):
            return []
        declared = _fields(kind)
        found = [f"{path}.{key}" for key in data if key not in declared]
        for key, value in data.items():
            if key in declared:
                found += undeclared(declared[key], value, f"{path}.{key}")
        return found
    if origin in (list, typing.List, Iterable, typing.Iterable, typing.Sequence):  # noqa: UP006
        (item,) = get_args(kind) or (Any,)
        found = []
        for n, value in enumerate(data if isinstance(data, list) else []):
            if origin not in (list, typing.List):  # noqa: UP006
                problem = invalid(item, value)
                found += [f"{path}[{n}]: {problem}"] if problem else []
            found += undeclared(item, value, f"{path}[{n}]")
        return found
    if origin in (dict, typing.Dict) and isinstance(data, dict):  # noqa: UP006
        value_type = get_args(kind)[1] if get_args(kind) else Any
        return [p for k, v in data.items() for p in undeclared(value_type, v, f"{path}.{k}")]
    return []


def drift(kind: Any, data: Any) -> list[str]:
    """How `data` differs from what `kind` says: pydantic's refusal, if any, then what the walk finds
    (`$.path.to.key: not declared`, or a path and what is wrong there)."""
    problem = invalid(kind, data)
    found = [p if ": " in p else f"{p}: not declared" for p in undeclared(kind, data)]
    return ([problem] if problem else []) + found
