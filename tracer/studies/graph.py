"""The node map as data: per-node rows, per-node memory read off a Trace, the networkx graph and its export.

No torch import: everything here works on `FxMap` rows and a `Trace` alone. `studies/fxmap.py` builds the
map (fx on meta, or module hooks when fx cannot trace the model) and attributes the engine's events.

FLOPs follow `torch.utils.flop_counter`: a fused multiply-add counts 2 (fvcore's `FlopCountAnalysis` counts
it 1, so its conv, linear and matmul numbers are half of these).
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import networkx as nx

from ..analysis import peaks as analysis
from ..core.records import Category, Event, Kind, Phase, StorageInfo, Trace

ROOT = "(root)"  # the model itself, as a node of a module map


class MapPath(str, Enum):
    """How the map was made: the whole model traced by fx, fx with some modules kept as leaves, or modules."""

    FX = "fx"
    LEAF = "fx-leaf"
    MODULES = "modules"


@dataclass(frozen=True)
class NodeInfo:
    """One node: an fx node, or a module in a module map.

    `preds` are the nodes its edges come from: the fx node's inputs, or a module's parent in a module map.
    `calls` are the module calls fx inlined that the node runs in (nn_module_stack keys, outermost first).
    `shape`/`dtype` are those of its first tensor output; `out_bytes` is the nominal size of all its tensor
    outputs (views included). `params` counts the parameters this node uses that no earlier node did: a
    call_module node counts its module's, children included (they never appear as nodes of their own), a
    get_attr node the parameter it reads; in a module map each module counts its direct parameters. The sum
    over nodes is the model's parameter count, tied weights once. FLOPs: forward ops run by the node, and
    backward ops of the autograd nodes it created (2 per multiply-add, see the module docstring).
    """

    index: int
    name: str
    op: str
    target: str
    module: str
    preds: tuple[str, ...]
    calls: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    out_bytes: int
    params: int
    param_bytes: int
    flops: int
    backward_flops: int


@dataclass(frozen=True)
class NodeRun:
    """One run of a node in the engine's forward: the events with seq in [start, end) happened during it,
    and its outputs live in these storages."""

    node: str
    iteration: int
    start: int
    end: int
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class FxMap:
    """The node map of a model, and, after `trace_with_map`, where each node ran in the trace."""

    path: MapPath
    reason: str  # why fx was not used as is: the fx error's first line; "" on the plain fx path
    leaves: tuple[str, ...]  # modules made leaves of the fx graph beyond torch.nn's own
    nodes: tuple[NodeInfo, ...]
    runs: tuple[NodeRun, ...] = ()

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


@dataclass(frozen=True)
class NodeMemory:
    """What one node costs in one iteration of the trace. Seqs are event seqs, -1 where there is none.

    saved_bytes: its activations (storages it allocated that autograd keeps) live at the end of the forward.
    output_*: the storages of its outputs that it allocated itself (views and in-place results have none):
    when allocated, and when the last of them was freed (phase, step, and the node whose step it is).
    Forward step k is the k-th node of the map (the run the event happened in); backward step k is the k-th
    run of consecutive backward allocations made for one node.
    backward_*: storages allocated in backward for this node's autograd nodes (gradient_bytes: those that
    became parameter gradients); first allocation and last free.
    """

    name: str
    saved_bytes: int
    output_bytes: int
    output_alloc_seq: int
    output_free_seq: int
    output_free_phase: Phase | None
    output_free_step: int
    output_free_node: str
    backward_bytes: int
    gradient_bytes: int
    backward_first_seq: int
    backward_last_free_seq: int


# --------------------------------------------------------------------------- memory per node


def _storage_key(path: MapPath) -> Callable[[StorageInfo], str]:
    if path is MapPath.MODULES:
        return lambda s: s.module or ROOT
    return lambda s: s.node


def _event_key(path: MapPath) -> Callable[[Event], str]:
    if path is MapPath.MODULES:
        return lambda e: e.module or ROOT
    return lambda e: e.node


@dataclass(frozen=True)
class _Steps:
    """Which step an event seq falls in: forward runs (innermost first) and backward allocation runs."""

    runs: tuple[NodeRun, ...]
    starts: tuple[int, ...]
    order: dict[str, int]
    back_starts: tuple[int, ...]
    back_nodes: tuple[str, ...]

    def at(self, seq: int, phase: Phase) -> tuple[int, str]:
        if phase is Phase.FORWARD:
            i = bisect.bisect_right(self.starts, seq) - 1
            while i >= 0 and not self.runs[i].start <= seq < self.runs[i].end:
                i -= 1
            return (self.order.get(self.runs[i].node, -1), self.runs[i].node) if i >= 0 else (-1, "")
        if phase is Phase.BACKWARD and self.back_starts:
            i = max(bisect.bisect_right(self.back_starts, seq) - 1, 0)
            return i, self.back_nodes[i]
        return -1, ""


def _steps(trace: Trace, fxmap: FxMap, iteration: int) -> _Steps:
    runs = sorted((r for r in fxmap.runs if r.iteration == iteration), key=lambda r: (r.start, -r.end))
    key = _event_key(fxmap.path)
    starts: list[int] = []
    nodes: list[str] = []
    for ev in trace.events:
        backward = ev.kind is Kind.ALLOC and ev.phase is Phase.BACKWARD and ev.iteration == iteration
        if backward and (not nodes or nodes[-1] != key(ev)):
            starts.append(ev.seq)
            nodes.append(key(ev))
    order = {n.name: n.index for n in fxmap.nodes}
    return _Steps(tuple(runs), tuple(r.start for r in runs), order, tuple(starts), tuple(nodes))


def _forward_end(trace: Trace, iteration: int) -> int:
    """Index of the iteration's last forward event (the sweep as backward begins included), -1 if none."""
    last = -1
    for i, ev in enumerate(trace.events):
        if ev.phase is Phase.FORWARD and ev.iteration == iteration:
            last = i
    return last


def saved_at_forward_end(trace: Trace, iteration: int) -> list[StorageInfo]:
    """The activation storages live when the iteration's forward ends (what autograd keeps for backward)."""
    end = _forward_end(trace, iteration)
    live = analysis.live_at(trace, end) if end >= 0 else set()
    return [trace.storages[s] for s in sorted(live) if trace.storages[s].category is Category.ACTIVATION]


def node_memory(trace: Trace, fxmap: FxMap, iteration: int) -> tuple[NodeMemory, ...]:
    """One row per node of the map, in map order, for one iteration of the trace."""
    key = _storage_key(fxmap.path)
    allocs = {e.storage: e for e in trace.events if e.kind is Kind.ALLOC}
    frees = {e.storage: e for e in trace.events if e.kind is Kind.FREE}
    saved: dict[str, int] = defaultdict(int)
    for s in saved_at_forward_end(trace, iteration):
        saved[key(s)] += s.nbytes
    outputs: dict[str, set[int]] = defaultdict(set)
    for run in fxmap.runs:
        if run.iteration == iteration:
            outputs[run.node].update(run.outputs)
    backward: dict[str, list[int]] = defaultdict(list)
    for sid, ev in allocs.items():
        if ev.phase is Phase.BACKWARD and ev.iteration == iteration:
            backward[key(trace.storages[sid])].append(sid)
    steps = _steps(trace, fxmap, iteration)
    ctx = _Ctx(trace, key, allocs, frees, steps)
    return tuple(
        _row(ctx, n.name, saved[n.name], outputs.get(n.name, set()), backward.get(n.name, []))
        for n in fxmap.nodes
    )


@dataclass(frozen=True)
class _Ctx:
    trace: Trace
    key: Callable[[StorageInfo], str]
    allocs: dict[int, Event]
    frees: dict[int, Event]
    steps: _Steps


def _row(ctx: _Ctx, name: str, saved: int, outputs: set[int], backward: list[int]) -> NodeMemory:
    own = sorted(s for s in outputs if ctx.key(ctx.trace.storages[s]) == name and s in ctx.allocs)
    free = _last_free(ctx, own)
    step, free_node = ctx.steps.at(free.seq, free.phase) if free is not None else (-1, "")
    back_free = _last_free(ctx, backward)
    return NodeMemory(
        name=name,
        saved_bytes=saved,
        output_bytes=sum(ctx.trace.storages[s].nbytes for s in own),
        output_alloc_seq=min((ctx.allocs[s].seq for s in own), default=-1),
        output_free_seq=free.seq if free is not None else -1,
        output_free_phase=free.phase if free is not None else None,
        output_free_step=step,
        output_free_node=free_node,
        backward_bytes=sum(ctx.trace.storages[s].nbytes for s in backward),
        gradient_bytes=sum(
            ctx.trace.storages[s].nbytes
            for s in backward
            if ctx.trace.storages[s].category is Category.GRADIENT
        ),
        backward_first_seq=min((ctx.allocs[s].seq for s in backward), default=-1),
        backward_last_free_seq=back_free.seq if back_free is not None else -1,
    )


def _last_free(ctx: _Ctx, sids: list[int]) -> Event | None:
    """The last free among the storages, None if there are none or one of them is never freed."""
    if not sids or any(s not in ctx.frees for s in sids):
        return None
    return max((ctx.frees[s] for s in sids), key=lambda e: e.seq)


# --------------------------------------------------------------------------- the networkx graph


def build_graph(fxmap: FxMap, memory: tuple[NodeMemory, ...] = ()) -> nx.DiGraph:
    """The map as a DiGraph: an edge u -> v where v consumes u's output (a module map: parent -> child).

    Node attributes are plain ints and strings: the NodeInfo fields (shape as "2x3"), and the NodeMemory
    fields when given (a phase as its name, "" for none).
    """
    g = nx.DiGraph(path=fxmap.path.value, reason=fxmap.reason, leaves=",".join(fxmap.leaves))
    rows = {m.name: m for m in memory}
    for n in fxmap.nodes:
        g.add_node(n.name, **_attributes(n, rows.get(n.name)))
    for n in fxmap.nodes:
        for p in n.preds:
            if p in g:
                g.add_edge(p, n.name)
    return g


def _attributes(n: NodeInfo, mem: NodeMemory | None) -> dict[str, int | str]:
    attrs: dict[str, int | str] = {}
    for k, v in asdict(n).items():
        if k == "preds":
            continue
        attrs[k] = "x".join(str(d) for d in v) if k == "shape" else ",".join(v) if k == "calls" else v
    if mem is not None:
        for k, v in asdict(mem).items():
            if k != "name":
                attrs[k] = v.value if isinstance(v, Phase) else ("" if v is None else v)
    return attrs


def last_uses(g: nx.DiGraph) -> dict[str, str]:
    """For each node, the last node in execution order (the `index` attribute) that consumes its output;
    "" for a node nothing consumes."""
    return {
        n: max(g.successors(n), key=lambda s: g.nodes[s]["index"], default="")  # type: ignore[no-any-return]
        for n in g.nodes
    }


def release_after(g: nx.DiGraph) -> dict[str, str]:
    """For each node, the node after which eager Python drops its output: its last user, or, when it is an
    argument of a module call that fx inlined, that call's last node (the caller holds its arguments until
    the call returns); a node nothing consumes, itself."""
    order = sorted(g.nodes, key=lambda n: g.nodes[n]["index"])
    ends: dict[str, int] = {}
    for i, n in enumerate(order):
        ends.update((c, i) for c in _calls(g, n))
    position = {n: i for i, n in enumerate(order)}
    out: dict[str, str] = {}
    for v in order:
        own = set(_calls(g, v))
        held = [position[v]]
        for u in g.successors(v):
            held += [position[u], *(ends[c] for c in _calls(g, u) if c not in own)]
        out[v] = order[max(held)]
    return out


def _calls(g: nx.DiGraph, n: str) -> list[str]:
    text = str(g.nodes[n].get("calls", ""))
    return text.split(",") if text else []


def live_ranges(g: nx.DiGraph) -> dict[str, tuple[int, int]]:
    """For each node, the execution steps its output is live over: (its own index, its last user's index)."""
    last = last_uses(g)
    return {
        n: (g.nodes[n]["index"], g.nodes[last[n]]["index"] if last[n] else g.nodes[n]["index"])
        for n in g.nodes
    }


# --------------------------------------------------------------------------- export


def export_graph(g: nx.DiGraph, path: str | Path) -> None:
    """Write the graph as GraphML (.graphml), Graphviz DOT (.dot) or node-link JSON (.json)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".graphml":
        nx.write_graphml(g, path)
    elif suffix == ".json":
        path.write_text(json.dumps(nx.node_link_data(g, edges="edges"), indent=1) + "\n")
    elif suffix == ".dot":
        path.write_text(to_dot(g))
    else:
        raise ValueError(f"unknown graph format {path.suffix!r} (.graphml, .dot or .json)")


def to_dot(g: nx.DiGraph) -> str:
    """DOT text: every attribute kept, and a label with the name, target, shape and memory if known."""
    lines = [f"digraph {_quote(str(g.graph.get('path', 'memtrace')))} {{", "  node [shape=box];"]
    for n, attrs in g.nodes(data=True):
        fields = {"label": _label(str(n), attrs), **{k: str(v) for k, v in attrs.items()}}
        body = ", ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        lines.append(f"  {_quote(str(n))} [{body}];")
    lines += [f"  {_quote(str(u))} -> {_quote(str(v))};" for u, v in g.edges]
    return "\n".join([*lines, "}"]) + "\n"


def _label(name: str, attrs: dict[str, Any]) -> str:
    parts = [name, str(attrs.get("target", ""))]
    if attrs.get("shape"):
        parts.append(f"{attrs['shape']} {attrs.get('dtype', '')}".strip())
    if attrs.get("saved_bytes"):
        parts.append(f"saved {attrs['saved_bytes']} B")
    return "\n".join(p for p in parts if p)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
