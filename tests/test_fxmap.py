"""The node map: fx on meta, events attributed to fx nodes, per-node memory, liveness, fallbacks, FLOPs."""

from __future__ import annotations

import functools
import json
import operator
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch import nn
from zoo import ZOO, ZOO_BY_NAME, ZooCase, _seed_cnn_module, make_inputs

from memtrace.tracer.analysis import peaks as analysis
from memtrace.tracer.core.records import Category, Kind, Phase, StorageInfo, Trace
from memtrace.tracer.core.specs import OptimizerSpec
from memtrace.tracer.simulate import Config, trace_model
from memtrace.tracer.studies.fxmap import build_map, trace_graph, trace_with_map
from memtrace.tracer.studies.graph import (
    ROOT,
    FxMap,
    MapPath,
    NodeInfo,
    build_graph,
    export_graph,
    last_uses,
    node_memory,
    release_after,
)

TRAIN = Config("train", OptimizerSpec("adam"), "cpu")
INFER = Config("infer", OptimizerSpec("adam"), "cpu")
LAST = TRAIN.iterations - 1


def _meta(case: ZooCase) -> nn.Module:
    with torch.device("meta"):
        return case.build()


@functools.cache
def _traces(name: str, mode: str) -> tuple[Trace, Trace, FxMap]:
    """The eager engine trace and the mapped one (through the interpreter) of a zoo case, built once."""
    case, config = ZOO_BY_NAME[name], TRAIN if mode == "train" else INFER
    eager = trace_model(_meta(case), make_inputs(case, "meta"), config)
    mapped, fxmap = trace_with_map(_meta(case), make_inputs(case, "meta"), config)
    return eager, mapped, fxmap


# --------------------------------------------------------------------------- the engine through fx


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_interpreter_keeps_the_eager_peak(case: ZooCase) -> None:
    eager, mapped, fxmap = _traces(case.name, "train")
    assert fxmap.path is MapPath.FX and fxmap.reason == ""
    assert analysis.step_peak(mapped, LAST).bytes == analysis.step_peak(eager, LAST).bytes
    assert analysis.step_peak(mapped, 0).bytes == analysis.step_peak(eager, 0).bytes
    assert mapped.flops == eager.flops
    assert sum(n.flops + n.backward_flops for n in fxmap.nodes) == mapped.flops


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(256, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l1(x)
        b = self.l2(a)
        c = self.l3(b)  # eager: `a` is still a local here
        return c


def test_interpreter_peaks_lower_in_infer_mode() -> None:
    """Why --graph runs the step a second time (docs/map.md): the interpreter drops `a` after its last use,
    eager Python keeps it until the forward returns, so the infer-mode peaks differ by `c`."""
    with torch.device("meta"):
        eager_model, mapped_model = _Chain(), _Chain()
    x = torch.empty(64, 256, device="meta")
    eager = trace_model(eager_model, [x], INFER)
    mapped, fxmap = trace_with_map(mapped_model, [x], INFER)
    assert fxmap.path is MapPath.FX
    c_bytes = 64 * 256 * 4
    assert analysis.step_peak(eager, LAST).bytes == analysis.step_peak(mapped, LAST).bytes + c_bytes


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_saved_bytes_per_node_sum_to_the_saved_activations(case: ZooCase) -> None:
    _, trace, fxmap = _traces(case.name, "train")
    saved = _saved_at_backward(trace)
    rows = node_memory(trace, fxmap, LAST)
    assert saved and sum(r.saved_bytes for r in rows) == sum(s.nbytes for s in saved)
    names = {n.name for n in fxmap.nodes}
    assert all(s.node in names for s in saved)


def test_forward_and_backward_events_carry_their_node() -> None:
    _, trace, fxmap = _traces("mlp", "train")
    rows = {r.name: r for r in node_memory(trace, fxmap, LAST)}
    for name in ("fc1", "fc2", "fc3"):
        node = fxmap.node(name)
        assert rows[name].gradient_bytes == node.param_bytes  # weight and bias grads, made in its backward
        assert rows[name].output_bytes == node.out_bytes
        assert rows[name].backward_first_seq > rows[name].output_alloc_seq
    unattributed = [
        e
        for e in trace.events
        if e.kind is Kind.ALLOC and e.iteration == LAST and e.phase is Phase.BACKWARD and not e.node
    ]
    assert sum(e.nbytes for e in unattributed) <= 8  # the loss' own gradient
    fc1 = rows["fc1"]
    assert fc1.output_free_phase is Phase.FORWARD and fc1.output_free_node == "fc2"  # relu1 saves its own


def test_inlined_nodes_belong_to_their_module() -> None:
    _, trace, fxmap = _traces("transformer_sdpa", "train")
    sdpa = fxmap.node("scaled_dot_product_attention")
    assert sdpa.module == "blocks.block0.attn"
    assert sdpa.calls == ("blocks", "blocks.block0", "blocks.block0.attn")
    assert sdpa.target == "torch.nn.functional.scaled_dot_product_attention"
    qkv = fxmap.node("blocks_block0_attn_qkv")
    assert qkv.flops > 0 and qkv.backward_flops == 2 * qkv.flops
    events = [e for e in trace.events if e.node == sdpa.name and e.kind is Kind.ALLOC]
    assert events and all(e.module == "blocks.block0.attn" for e in events if e.phase is Phase.FORWARD)
    assert {e.phase for e in events} == {Phase.FORWARD, Phase.BACKWARD}
    pos = fxmap.node("pos_emb")
    assert (pos.op, pos.params, pos.module) == ("get_attr", 64 * 128, "")


def test_shapes_on_meta_and_node_rows() -> None:
    case = ZOO_BY_NAME["mlp"]
    model = _meta(case)
    fxmap, traced = build_map(model, make_inputs(case, "meta"), TRAIN)
    assert traced.gm is not None
    meta = {n.name: n.meta for n in traced.gm.graph.nodes}
    assert tuple(meta["fc1"]["tensor_meta"].shape) == (64, 2048)
    fc1 = fxmap.node("fc1")
    assert (fc1.op, fc1.target, fc1.module, fc1.preds) == ("call_module", "Linear", "fc1", ("input_1",))
    assert (fc1.shape, fc1.dtype, fc1.out_bytes) == ((64, 2048), "float32", 64 * 2048 * 4)
    assert (fc1.params, fc1.flops, fc1.backward_flops) == (
        512 * 2048 + 2048,
        2 * 64 * 512 * 2048,
        2 * 64 * 512 * 2048,
    )
    assert fxmap.runs == ()
    assert sum(n.params for n in fxmap.nodes) == sum(p.numel() for p in model.parameters())


def test_inplace_stays_inplace() -> None:
    traced = trace_graph(_meta(ZOO_BY_NAME["resnet_block"]))
    assert traced.gm is not None
    assert any(n.target is operator.iadd for n in traced.gm.graph.nodes)  # `out += identity`


# --------------------------------------------------------------------------- liveness


@pytest.mark.parametrize(
    "name", ["resnet_block", "depthwise", "transformer_sdpa", "groupnorm_unet", "frozen_middle"]
)
def test_liveness_matches_the_engine_frees(name: str) -> None:
    """In infer mode (nothing saved) a storage is freed as the node after its release point starts: after
    the last user of every node aliasing it (views, in-place), held to the end of an inlined module call
    it was an argument of."""
    _, trace, fxmap = _traces(name, "infer")
    g = build_graph(fxmap, node_memory(trace, fxmap, LAST))
    release, last = release_after(g), last_uses(g)
    aliases: dict[int, list[str]] = defaultdict(list)
    for run in fxmap.runs:
        if run.iteration == LAST:
            for sid in run.outputs:
                aliases[sid].append(run.node)
    checked = 0
    for sid, nodes in aliases.items():
        owner = trace.storages[sid].node
        if owner not in nodes or any(release[n] == "output" for n in nodes):
            continue  # a view of an input or parameter; the model's output
        expected = max(g.nodes[release[n]]["index"] for n in nodes) + 1
        assert g.nodes[owner]["output_free_step"] == expected, owner
        checked += 1
    assert checked >= 4
    assert sum(release[n] == last[n] for n in g if last[n]) > len(g) // 2


def test_release_on_a_hand_written_map() -> None:
    def node(i: int, name: str, preds: tuple[str, ...], calls: tuple[str, ...] = ()) -> NodeInfo:
        return NodeInfo(i, name, "call_function", "f", "", preds, calls, (), "", 0, 0, 0, 0, 0)

    fxmap = FxMap(
        MapPath.FX,
        "",
        (),
        (
            node(0, "x", ()),
            node(1, "a", ("x",), ("blk",)),
            node(2, "b", ("a",), ("blk",)),
            node(3, "c", ("b",), ("blk",)),
            node(4, "d", ("c", "x")),
            node(5, "unused", ("d",)),
            node(6, "e", ("d",)),
        ),
    )
    g = build_graph(fxmap)
    assert last_uses(g) == {"x": "d", "a": "b", "b": "c", "c": "d", "d": "e", "unused": "", "e": ""}
    release = release_after(g)
    assert release["x"] == "d" and release["a"] == "b" and release["unused"] == "unused"
    fxmap2 = FxMap(MapPath.FX, "", (), (*fxmap.nodes[:4], node(4, "d", ("c",)), *fxmap.nodes[5:]))
    assert release_after(build_graph(fxmap2))["x"] == "c"  # held by the caller until blk returns


# --------------------------------------------------------------------------- fallbacks


class _Gate(nn.Module):
    """Shape-dependent Python control flow: runs on meta, but fx cannot trace `if` on a Proxy."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x)
        return torch.relu(y) if x.shape[-1] > 4 else y


class LeafNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 256)
        self.block = nn.Sequential(OrderedDict(gate=_Gate(256), act=nn.GELU()))
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.head(self.block(self.stem(x)) * 2)
        return y


class RootBranch(LeafNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        y: torch.Tensor = self.head(self.block(self.stem(x)))
        return y.sum(1)


def _fallback(cls: type[nn.Module]) -> tuple[Trace, Trace, FxMap]:
    with torch.device("meta"):
        a, b = cls(), cls()
    x = [torch.empty(32, 64, device="meta")]
    return trace_model(a, x, TRAIN), *trace_with_map(b, x, TRAIN)


def test_leaf_module_fallback() -> None:
    eager, trace, fxmap = _fallback(LeafNet)
    assert fxmap.path is MapPath.LEAF and fxmap.leaves == ("block.gate",)
    assert fxmap.reason.startswith("TraceError: ") and "(in block.gate)" in fxmap.reason
    gate = fxmap.node("block_gate")
    assert (gate.op, gate.target, gate.params) == ("call_module", "_Gate", 256 * 256 + 256)
    assert analysis.step_peak(trace, LAST).bytes == analysis.step_peak(eager, LAST).bytes
    rows = {r.name: r for r in node_memory(trace, fxmap, LAST)}
    assert rows["block_gate"].saved_bytes > 0 and rows["block_gate"].gradient_bytes == gate.param_bytes


def test_module_fallback() -> None:
    eager, trace, fxmap = _fallback(RootBranch)
    assert fxmap.path is MapPath.MODULES and fxmap.leaves == ()
    assert fxmap.reason.startswith("TraceError: ") and "(in" not in fxmap.reason
    assert [n.name for n in fxmap.nodes] == [
        ROOT,
        "stem",
        "block",
        "block.gate",
        "block.gate.fc",
        "block.act",
        "head",
    ]
    assert fxmap.node("block.gate.fc").preds == ("block.gate",)
    assert analysis.step_peak(trace, LAST).bytes == analysis.step_peak(eager, LAST).bytes
    rows = node_memory(trace, fxmap, LAST)
    saved = _saved_at_backward(trace)
    assert sum(r.saved_bytes for r in rows) == sum(s.nbytes for s in saved) > 0
    fc = fxmap.node("block.gate.fc")
    assert fc.flops == 2 * 32 * 256 * 256 and fc.shape == (32, 1, 256)
    assert sum(n.flops + n.backward_flops for n in fxmap.nodes) == trace.flops


def test_a_graph_that_does_not_run_falls_back_to_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    from memtrace.tracer.studies import fxmap as fxmap_module

    def fail(*args: object) -> None:
        raise RuntimeError("no kernel for this on meta\nmore detail")

    monkeypatch.setattr(fxmap_module, "fx_nodes", fail)
    case = ZOO_BY_NAME["mlp"]
    trace, fxmap = trace_with_map(_meta(case), make_inputs(case, "meta"), INFER)
    assert fxmap.path is MapPath.MODULES
    assert fxmap.reason == "the fx graph did not run on meta: RuntimeError: no kernel for this on meta"
    assert {r.node for r in fxmap.runs} == {n.name for n in fxmap.nodes}
    assert fxmap.node("fc2").flops == 2 * 64 * 2048 * 2048
    assert analysis.step_peak(trace, LAST).bytes == analysis.step_peak(_traces("mlp", "infer")[0], LAST).bytes


def _saved_at_backward(trace: Trace) -> list[StorageInfo]:
    """The activations live as the last iteration's backward begins, from the timeline alone."""
    first = next(i for i, e in enumerate(trace.events) if e.phase is Phase.BACKWARD and e.iteration == LAST)
    live = analysis.live_at(trace, first - 1)
    return [trace.storages[s] for s in live if trace.storages[s].category is Category.ACTIVATION]


# --------------------------------------------------------------------------- FLOPs and parameters vs fvcore


def _cpu_case(name: str) -> tuple[nn.Module, nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """The model on CPU (for fvcore) and on meta (for the map), with inputs for each."""
    build: Callable[[], nn.Module]
    if name == "seed_cnn":
        build = functools.partial(_seed_cnn_module().build, h=32, w=32, classes=10)
        x = torch.randn(2, 3, 32, 32)
        cpu_x, meta_x = [x], [x.to("meta")]
    else:
        case = ZOO_BY_NAME[name]
        build, cpu_x, meta_x = case.build, make_inputs(case, "cpu"), make_inputs(case, "meta")
    with torch.device("meta"):
        meta = build()
    return build(), meta, cpu_x, meta_x


@pytest.mark.parametrize("name", ["mlp", "seed_cnn", "resnet_block"])
def test_flops_are_twice_fvcore(name: str) -> None:
    """torch.utils.flop_counter counts 2 per multiply-add, fvcore 1; norms and pools only fvcore counts."""
    fvcore = pytest.importorskip("fvcore.nn")
    cpu, meta, cpu_x, meta_x = _cpu_case(name)
    fa = fvcore.FlopCountAnalysis(cpu.eval(), tuple(cpu_x))
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fxmap, _ = build_map(meta, meta_x, INFER)
    ops = fa.by_operator()
    assert sum(n.flops for n in fxmap.nodes) == 2 * sum(ops.get(k, 0) for k in ("conv", "linear", "matmul"))
    modules = fa.by_module()
    for n in fxmap.nodes:
        if n.target in ("Linear", "Conv2d"):
            assert n.flops == 2 * modules[n.module], n.name


@pytest.mark.parametrize("name", ["mlp", "seed_cnn", "resnet_block", "transformer_sdpa", "tied", "lstm"])
def test_parameters_match_fvcore(name: str) -> None:
    fvcore = pytest.importorskip("fvcore.nn")
    cpu, meta, _, meta_x = _cpu_case(name)
    counts = fvcore.parameter_count(cpu)
    fxmap, _ = build_map(meta, meta_x, INFER)
    assert sum(n.params for n in fxmap.nodes) == counts[""]
    for n in fxmap.nodes:
        if n.op == "call_module" and name != "tied":  # tied: the head's weight is counted at the embedding
            assert n.params == counts.get(n.module, 0), n.name


# --------------------------------------------------------------------------- the graph and its export


def test_graph_attributes_are_plain() -> None:
    _, trace, fxmap = _traces("resnet_block", "train")
    g = build_graph(fxmap, node_memory(trace, fxmap, LAST))
    assert g.number_of_nodes() == len(fxmap.nodes)
    assert g.has_edge("conv1", "bn1") and g.graph["path"] == "fx"
    for _, attrs in g.nodes(data=True):
        assert all(type(v) in (int, str) for v in attrs.values())
    assert g.nodes["conv1"]["shape"] == "4x32x64x64" and g.nodes["conv1"]["saved_bytes"] > 0


def test_export_formats(tmp_path: Path) -> None:
    _, trace, fxmap = _traces("mlp", "train")
    g = build_graph(fxmap, node_memory(trace, fxmap, LAST))
    export_graph(g, tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert set(back.edges) == set(g.edges) and back.nodes["fc1"]["params"] == g.nodes["fc1"]["params"]
    export_graph(g, tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert nx.node_link_graph(data, edges="edges").nodes["fc2"]["flops"] == g.nodes["fc2"]["flops"]
    export_graph(g, tmp_path / "g.dot")
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith('digraph "fx" {') and '"fc1" -> "relu1";' in dot and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == g.number_of_edges()
    with pytest.raises(ValueError, match="unknown graph format"):
        export_graph(g, tmp_path / "g.png")


def test_a_builtin_is_named_even_when_torch_listed_it_while_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.overrides.resolve_name` reads a table built once per process: built while a device rule's
    stand-in replaced `F.scaled_dot_product_attention` (an earlier simulation), it lacks the builtin."""
    from torch import fx, overrides

    from memtrace.tracer.studies.fxmap import _target

    functional = torch.nn.functional
    builtin = functional.scaled_dot_product_attention
    table = overrides._get_overridable_functions
    table.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(functional, "scaled_dot_product_attention", lambda *a, **k: builtin(*a, **k))
        overrides.resolve_name(builtin)  # the table, built while patched
    try:
        assert overrides.resolve_name(builtin) is None  # the state the suite met

        class Attend(torch.nn.Module):
            def forward(self, q: torch.Tensor) -> torch.Tensor:
                return functional.scaled_dot_product_attention(q, q, q)

        gm = fx.symbolic_trace(Attend())
        node = next(n for n in gm.graph.nodes if n.op == "call_function")
        assert _target(gm, node) == "torch.nn.functional.scaled_dot_product_attention"
    finally:
        table.cache_clear()
