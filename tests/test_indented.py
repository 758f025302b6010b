"""`outputs.indented.dumps` writes what `json.dumps(obj, indent=2)` writes, byte for byte, and
`core.plain.plain` gives what `dataclasses.asdict` then the old enum and tuple conversion gave."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import pytest

from memtrace.tracer.core.plain import plain
from memtrace.tracer.core.records import Category
from memtrace.tracer.outputs.indented import dumps

EDGES: list[Any] = [
    {},
    [],
    (),
    {"a": {}, "b": [], "c": [{}], "d": [[]]},
    [1, True, 2],  # a bool among ints is not an int
    [1, 2.5, 3],
    {"n": None, "t": True, "f": False, "x": -0.0, "big": 10**30, "neg": -7},
    [float("nan"), float("inf"), -float("inf"), 1e-300, 0.1],
    {"é": 'ünïcode \u2603 \n\t"quoted" \\ \x00', "\ud83d": "lone surrogate"},
    {3: "int key", 2.5: "float key", True: "bool key", None: "none key"},
    {"k": {3: [1, 2]}},
    {Category.ACTIVATION: 1, "s": Category.PARAMETER},  # str enums: keys and values as json writes them
    [(1, 2), [3, (4, 5)], ("a", None)],
    "top-level string",
    17,
    None,
]


@pytest.mark.parametrize("obj", EDGES, ids=range(len(EDGES)))
def test_edges_as_json_writes_them(obj: Any) -> None:
    assert dumps(obj) == json.dumps(obj, indent=2)


def _random(rng: random.Random, depth: int) -> Any:
    pick = rng.randrange(10 if depth < 5 else 6)
    if pick == 0:
        return rng.randrange(-(10**12), 10**12)
    if pick == 1:
        return rng.choice([None, True, False, 0.5, -3.25, float("nan"), 1e20])
    if pick == 2:
        return "".join(rng.choice('ab,:{}[]"\\\n é\u2603') for _ in range(rng.randrange(6)))
    if pick == 3:
        return [rng.randrange(100) for _ in range(rng.randrange(5))]
    if pick in (4, 5):
        return rng.choice([1, "x"])
    if pick in (6, 7):
        return {
            rng.choice(["k", "key", "é", "a,b", 1, 2.0, None]) if rng.random() < 0.1 else f"k{i}": _random(
                rng, depth + 1
            )
            for i in range(rng.randrange(5))
        }
    return [_random(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_random_documents_as_json_writes_them() -> None:
    rng = random.Random(20)
    for _ in range(2000):
        obj = _random(rng, 0)
        assert dumps(obj) == json.dumps(obj, indent=2)


def test_values_json_refuses_are_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"a": [object()]})


class Colour(Enum):
    RED = "red"
    BLUE = (1, 2)


@dataclass(frozen=True)
class Inner:
    colour: Colour
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    rows: tuple[Inner, ...]
    by: dict[Category, int]
    nested: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
    other: Any = None


def _asdict_then_jsonable(obj: Any) -> Any:
    """What Result.to_json did before `plain`: `asdict`, then enums to values and tuples to lists."""

    def jsonable(o: Any) -> Any:
        if isinstance(o, Enum):
            return o.value
        if isinstance(o, dict):
            return {jsonable(k): jsonable(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [jsonable(v) for v in o]
        return o

    return jsonable(asdict(obj))


def test_plain_is_asdict_then_the_enum_and_tuple_conversion() -> None:
    inner = Inner(Colour.BLUE, (1, 2, 3))
    outer = Outer(
        "n",
        inner,
        (inner, Inner(Colour.RED, ())),
        {Category.ACTIVATION: 5, Category.GRADIENT: 0},
        [{"a": (1,)}, {}],
        other={"deep": [Category.OUTPUT, (Colour.RED,)]},
    )
    made = plain(outer)
    assert made == _asdict_then_jsonable(outer)
    assert json.dumps(made) == json.dumps(_asdict_then_jsonable(outer))
    assert type(made["inner"]["sizes"]) is list and made["inner"]["colour"] == (1, 2)  # a value as it is
