"""Records as JSON's plain values: `plain(record)` is what `dataclasses.asdict` and then the conversion of
every enum to its value, every tuple to a list give, in one walk (no deep copy made, then walked again:
a 70B step's result is ~60k values).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain(obj: Any) -> Any:
    """A dataclass as a dict of its fields (in their order), an enum as its value, a dict with its keys and
    values made plain, a list or tuple as a list; anything else as it is."""
    kind = type(obj)
    if kind in _SCALARS:
        return obj
    if isinstance(obj, Enum):
        return obj.value
    if kind is dict:  # the common case, ahead of the dataclass test
        return {plain(k): plain(v) for k, v in obj.items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        return {name: plain(getattr(obj, name)) for name in _names(kind)}
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _names(kind: type) -> tuple[str, ...]:
    names = _NAMES.get(kind)
    if names is None:
        names = _NAMES[kind] = tuple(f.name for f in fields(kind))
    return names


_NAMES: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, in order
