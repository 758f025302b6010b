"""The fx map for a request: the node graph with per-node memory, and how it was obtained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from ..simulate import Request, build, step_batch, step_specs
from .fxmap import checkpoint_leaves, trace_graph, trace_with_map
from .graph import FxMap, MapPath, build_graph, export_graph, node_memory


def path_line(path: MapPath, reason: str, leaves: tuple[str, ...]) -> str:
    """Which path made the map and why, in one line for the user."""
    if path is MapPath.FX:
        return "map: torch.fx symbolic trace"
    if path is MapPath.LEAF:
        return f"map: torch.fx with {', '.join(leaves)} kept as leaf modules (fx failed there: {reason})"
    return (
        "map: torch.fx could not trace the model, so the layers come from module hooks (each module's own "
        f"figures, no per-op graph); the reason: {_short(reason)}"
    )


def _short(reason: str, most: int = 100) -> str:
    """fx's error, cut to one short clause."""
    return reason if len(reason) <= most else reason[: most - 3] + "..."


@dataclass(frozen=True)
class MapResult:
    fxmap: FxMap
    graph: nx.DiGraph

    def path_line(self) -> str:
        return path_line(self.fxmap.path, self.fxmap.reason, self.fxmap.leaves)


def map_path(request: Request) -> str:
    """How the map would be made for this model (fx tracing only, no simulation), as path_line says it."""
    built = build(request.builder, dict(request.builder_kwargs))
    traced = trace_graph(built.model, checkpoint_leaves(built.model, request.config))
    return path_line(traced.path, traced.reason, traced.leaves)


def map_request(request: Request) -> MapResult:
    """Build the model afresh and run the step through the fx map (or its fallbacks)."""
    built = build(request.builder, dict(request.builder_kwargs))
    if request.transform is not None:
        request.transform(built.model)
    specs = step_specs(request, built)
    trace, fxmap = trace_with_map(built.model, step_batch(request, specs), request.config)
    memory = node_memory(trace, fxmap, request.config.iterations - 1)
    return MapResult(fxmap, build_graph(fxmap, memory))


def export(result: MapResult, path: Path) -> None:
    export_graph(result.graph, path)
