"""`json.dumps(obj, indent=2)`'s text, byte for byte, in a third of its time on a result.

With an indent, the standard library encodes in Python, one call per value (its C encoder takes no
indent before Python 3.13); a 70B step's result is ~160k values, most of them in lists of integers (the
timeline) and in flat dicts (module rows, segments). Those are joined here in one call each; anything
else (a key that is not a string, a value of another type, NaN) is left to `json.dumps` and its lines
shifted to their depth, which is what `json` writes there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _string  # type: ignore[attr-defined]
from typing import Any


def _float(o: float) -> str:
    return float.__repr__(o) if o - o == 0.0 else json.dumps(o)  # NaN, Infinity as json writes them


def _bool(o: bool) -> str:
    return "true" if o else "false"


def _null(o: None) -> str:
    return "null"


_SCALAR: dict[type, Callable[[Any], str]] = {
    str: _string,
    int: int.__repr__,
    float: _float,
    bool: _bool,
    type(None): _null,
}


def dumps(obj: Any) -> str:
    """`json.dumps(obj, indent=2)`: the same text."""
    return _text(obj, "\n")


def _text(o: Any, nl: str) -> str:
    """`o` at the depth whose line break and indent is `nl`."""
    kind = type(o)
    scalar = _SCALAR.get(kind)
    if scalar is not None:
        return scalar(o)
    inner = nl + "  "
    comma = "," + inner
    if kind is dict:
        if not o:
            return "{}"
        get, items = _SCALAR.get, []
        for k, v in o.items():
            if type(k) is not str:
                return _shifted(o, nl)
            e = get(type(v))
            items.append(f"{_string(k)}: {e(v) if e is not None else _text(v, inner)}")
        return "{" + inner + comma.join(items) + nl + "}"
    if kind is list or kind is tuple:
        if not o:
            return "[]"
        if all(type(x) is int for x in o):
            return "[" + inner + comma.join(map(int.__repr__, o)) + nl + "]"
        return "[" + inner + comma.join([_text(x, inner) for x in o]) + nl + "]"
    return _shifted(o, nl)


def _shifted(o: Any, nl: str) -> str:
    """What json writes for `o` (a key that is not a string, another type), its lines shifted to `nl`."""
    return json.dumps(o, indent=2).replace("\n", nl)
