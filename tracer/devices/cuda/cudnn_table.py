"""Measured cuDNN convolution workspaces: the data format, its loading and the lookup. Pure: no torch.

cuDNN's heuristics choose the engine of each convolution call, and with it the workspace PyTorch allocates
through the caching allocator (`run_conv_plan`, aten/src/ATen/native/cudnn/Conv_v8.cpp): no rule in
PyTorch decides the size, so it is measured (`benchmarks/gpu/collect_cudnn.py`) and kept here as data.

The file (`cudnn_workspaces.json` beside this module, or any file of the same form), schema 1:

    {"schema": 1, "kind": "memtrace-cudnn-conv-workspaces",
     "tables": [{"compute_capability": "9.0", "cudnn_version": 91900, "gpu": "NVIDIA H200",
                 "torch": "2.13.0", "benchmark": false,
                 "entries": [{"key": "fwd|float32|nchw|8,64,56,56|64,3,3|1,1|1,1|1,1|1",
                              "bytes": 14450835}]}]}

One table per GPU architecture (compute capability) and cuDNN version (its integer, 91900 for 9.19.0);
`benchmark` says whether `cudnn.benchmark` was on. An entry's key is `ConvKey.text()`:
pass (fwd, bwd_data, bwd_filter) | dtype | layout (nchw, nhwc) | input n,c,h,w | weight o,kh,kw |
stride | padding | dilation | groups; `bytes` is the workspace the call allocated (0: none).

Lookup (`lookup`): on the table of the target's architecture and cuDNN version, a measured shape gives its
size, exact. Any other shape, or any shape on an architecture or cuDNN version not measured (the nearest
table then: the same architecture's nearest cuDNN version, else the nearest architecture), gives a range:
the smallest and largest workspace-to-operand ratios of the `NEAREST` nearest measured calls of the same
pass, dtype, layout, kernel, stride, dilation and grouping, times this call's operand bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import MemtraceError

SCHEMA = 1
KIND = "memtrace-cudnn-conv-workspaces"
PASSES = ("fwd", "bwd_data", "bwd_filter")
NEAREST = 4
DEFAULT_PATH = Path(__file__).with_name("cudnn_workspaces.json")


@dataclass(frozen=True)
class ConvKey:
    """One cuDNN convolution call, as measured and as looked up (2-d; 1-d has h = 1)."""

    pass_: str
    dtype: str
    layout: str
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def text(self) -> str:
        def ints(*v: int) -> str:
            return ",".join(str(x) for x in v)

        return "|".join(
            (
                self.pass_, self.dtype, self.layout, ints(self.n, self.c, self.h, self.w),
                ints(self.o, self.kh, self.kw), ints(*self.stride), ints(*self.padding), ints(*self.dilation),
                str(self.groups),
            )
        )  # fmt: skip

    @staticmethod
    def parse(text: str) -> ConvKey:
        parts = text.split("|")
        if len(parts) != 9 or parts[0] not in PASSES or parts[2] not in ("nchw", "nhwc"):
            raise ValueError(f"not a convolution key: {text!r}")
        nums = [tuple(int(x) for x in p.split(",")) for p in parts[3:8]]
        (n, c, h, w), (o, kh, kw), s, p, d = nums
        if len(s) != 2 or len(p) != 2 or len(d) != 2:
            raise ValueError(f"not a convolution key: {text!r}")
        return ConvKey(parts[0], parts[1], parts[2], n, c, h, w, o, kh, kw, s, p, d, int(parts[8]))  # type: ignore[arg-type]

    def output_hw(self) -> tuple[int, int]:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        ho = (self.h + 2 * ph - dh * (self.kh - 1) - 1) // sh + 1
        wo = (self.w + 2 * pw - dw * (self.kw - 1) - 1) // sw + 1
        return ho, wo

    def operand_elems(self) -> int:
        """Input, weight and output elements: what the workspace is compared with."""
        ho, wo = self.output_hw()
        weight = self.o * (self.c // max(1, self.groups)) * self.kh * self.kw
        return self.n * self.c * self.h * self.w + weight + self.n * self.o * ho * wo

    def family(self) -> tuple[object, ...]:
        """What must match for a measured call to bound this one."""
        return (self.pass_, self.dtype, self.layout, self.kh, self.kw, self.stride, self.dilation,
                self.groups == 1, self.groups == self.c == self.o)  # fmt: skip

    def distance(self, other: ConvKey) -> float:
        return sum(
            abs(math.log(max(1, a)) - math.log(max(1, b)))
            for a, b in ((self.n, other.n), (self.c, other.c), (self.h, other.h), (self.w, other.w),
                         (self.o, other.o))
        )  # fmt: skip


@dataclass(frozen=True)
class Table:
    compute_capability: str
    cudnn_version: int
    entries: dict[ConvKey, int]
    gpu: str = ""
    benchmark: bool = False


@dataclass(frozen=True)
class Found:
    """The workspace of one call: exact (`low == high`, a measured shape on the target's own table) or a
    range, with what it rests on."""

    low: int
    high: int
    basis: str

    @property
    def exact(self) -> bool:
        return self.low == self.high and self.basis.startswith("measured")


def _arch(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def _arch_distance(a: str, b: str) -> tuple[int, int]:
    """The same major architecture (family) first, then the nearest minor one."""
    (ma, na), (mb, nb) = _arch(a), _arch(b)
    return abs(ma - mb), abs(na - nb)


def parse_tables(data: Any, where: str) -> list[Table]:
    """The tables of one file's JSON; a one-line MemtraceError naming what is wrong."""
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("schema") != SCHEMA:
        raise MemtraceError(f"{where}: not a cuDNN workspace table (kind {KIND!r}, schema {SCHEMA})")
    tables = []
    for i, t in enumerate(data.get("tables", [])):
        try:
            entries = {ConvKey.parse(e["key"]): int(e["bytes"]) for e in t["entries"]}
            _arch(str(t["compute_capability"]))
            cc, version = str(t["compute_capability"]), int(t["cudnn_version"])
            table = Table(cc, version, entries, str(t.get("gpu", "")), bool(t.get("benchmark", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise MemtraceError(f"{where}: table {i} is malformed ({exc})") from exc
        if any(v < 0 for v in entries.values()):
            raise MemtraceError(f"{where}: table {i} has a negative workspace")
        tables.append(table)
    return tables


def load(path: Path = DEFAULT_PATH) -> list[Table]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MemtraceError(f"cannot read the cuDNN workspace table {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemtraceError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from exc
    return parse_tables(data, str(path))


def nearest_table(tables: list[Table], cc: str, cudnn: int, key: ConvKey) -> Table | None:
    """The target's own table, else the same architecture's nearest cuDNN version, else the nearest
    architecture (the same major one first); only tables measured with `cudnn.benchmark` off (PyTorch's
    default, which memtrace models) that measured this call's family count."""
    useful = [t for t in tables if not t.benchmark and any(k.family() == key.family() for k in t.entries)]
    if not useful:
        return None
    return min(useful, key=lambda t: (_arch_distance(t.compute_capability, cc), abs(t.cudnn_version - cudnn)))


def lookup(tables: list[Table], cc: str, cudnn: int, key: ConvKey) -> Found | None:
    """The workspace of `key` on the GPU `cc` with cuDNN `cudnn`, from the measured tables; None when no
    table measured a call of its family."""
    table = nearest_table(tables, cc, cudnn, key)
    if table is None:
        return None
    own = table.compute_capability == cc and table.cudnn_version == cudnn
    where = f"sm{table.compute_capability.replace('.', '')} cuDNN {table.cudnn_version}"
    if own and key in table.entries:
        n = table.entries[key]
        return Found(n, n, f"measured on {where}")
    family = sorted((k for k in table.entries if k.family() == key.family()), key=key.distance)[:NEAREST]
    ratios = [table.entries[k] / k.operand_elems() for k in family]
    elems = key.operand_elems()
    low, high = math.floor(min(ratios) * elems), math.ceil(max(ratios) * elems)
    return Found(low, high, f"range from the {len(family)} nearest calls measured on {where}")
