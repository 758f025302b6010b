"""The test zoo's models (tests/zoo.py) as builders, so `memtrace` and `memtrace verify` can run them by name.

memtrace verify benchmarks/models/zoo_case.py:build --arg name=resnet_block --input 4x3x64x64 --device cuda
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

_TESTS = Path(__file__).resolve().parents[2] / "tests"


def build(name: str) -> nn.Module:
    """The zoo model `name`, seeded as the tests build it."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    from zoo import ZOO_BY_NAME

    return ZOO_BY_NAME[name].build()


def input_flags(name: str) -> list[str]:
    """The `--input` flags of zoo model `name` (SHAPE:DTYPE each)."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    from zoo import ZOO_BY_NAME

    flags: list[str] = []
    for shape, dtype in ZOO_BY_NAME[name].inputs:
        flags += ["--input", "x".join(map(str, shape)) + f":{dtype}"]
    return flags
