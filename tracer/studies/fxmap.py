"""The node map: the model as a torch.fx graph on meta, and every engine event attributed to its fx node.

`trace_with_map` runs the engine's program (`simulate.trace_model`) on a stand-in for the model whose
forward interprets the fx graph node by node: the recorder learns which node runs (`rec.fx_node`), and after
each node claims the autograd nodes it made, so backward events go to the forward node too. The stand-in
shares the model's submodules, parameters and buffers, so hooks, owners and the optimizer are the model's.

When fx cannot trace the model, the submodule the failure came from becomes a leaf of the graph and fx tries
again; when the failure is in the model's own forward, the map falls back to modules (module hooks, events'
`module` field). The map never makes a trace fail: only the engine run itself can.

Lifetimes: the interpreter drops a value after its last user, or, for an argument of a module call that fx
inlined, after that call's last node (an eager caller holds its arguments until the call returns), and keeps
`x += y` in place. In train mode the peak through the map is the eager one (the zoo's tests); in infer mode,
where nothing is saved, eager code also keeps values bound to Python locals (`identity = x`, `out = f(out)`)
until they are rebound or the forward returns, which the graph cannot see: an infer-mode peak through the
map can be lower than eager (by one activation on 3 of the 14 zoo models).

Shapes, output sizes and FLOPs per node come from one more forward (and backward in train mode) on meta,
under the device's patches and the recipe's casts and autocast: FLOPs of one micro-batch, without checkpoint
recompute. They use `torch.utils.flop_counter`'s formulas: 2 per fused multiply-add, where fvcore counts 1.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..core.errors import first_line
from ..core.records import Phase, Trace
from ..engine.batch import Batch, as_batch, floating_leaves
from ..engine.device_model import DeviceModel
from ..engine.flops import count_flops
from ..engine.losses import LossFn
from ..engine.recorder import Recorder, active_recorder
from ..engine.tensor_facts import claim
from .graph import ROOT, FxMap, MapPath, NodeInfo, NodeRun

if TYPE_CHECKING:
    from ..simulate import Config

MAX_LEAVES = 32  # fx retries, one more leaf module each, before the module map


# --------------------------------------------------------------------------- tracing


@dataclass(frozen=True)
class Traced:
    """The outcome of tracing: the graph (None on the module path), how it was made, and what the
    call_function targets were bound to when traced (the device patches rebind some while simulating)."""

    gm: fx.GraphModule | None
    path: MapPath
    reason: str
    leaves: tuple[str, ...]
    bound: dict[int, Any]


_INPLACE = ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior", "ixor")


class _Proxy(fx.Proxy):
    """A Proxy that records `x += y` and `x[i] = v` as the in-place operators eager Python runs (plain fx
    records `x + y`: a new tensor where eager writes into x; and cannot trace item assignment)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def _inplace(op: Callable[[Any, Any], Any]) -> Callable[[fx.Proxy, Any], fx.Proxy]:
    def method(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return method


for _name in _INPLACE:
    setattr(_Proxy, f"__{_name}__", _inplace(getattr(operator, _name)))


class _Tracer(fx.Tracer):
    """symbolic_trace's tracer with extra leaf modules; remembers the innermost module a failure came from."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.extra_leaves = leaves
        self.failed_in: str | None = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.extra_leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = _path_of(self, m)
            raise


def _path_of(tracer: fx.Tracer, m: nn.Module) -> str | None:
    try:
        return tracer.path_of_module(m)
    except NameError:
        return None


def trace_graph(model: nn.Module, leaves: Sequence[str] = ()) -> Traced:
    """fx-trace the model; on failure make the failing submodule a leaf and retry; else the module path."""
    chosen = list(leaves)
    reason = ""
    for _ in range(MAX_LEAVES + 1):
        tracer = _Tracer(frozenset(chosen))
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            where = tracer.failed_in
            reason = reason or first_line(exc) + (f" (in {where})" if where else "")
            if where is None or where in chosen:
                return Traced(None, MapPath.MODULES, reason, (), {})
            chosen.append(where)
            continue
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        path = MapPath.LEAF if reason else MapPath.FX
        return Traced(gm, path, reason, tuple(chosen), _bindings(gm))
    return Traced(None, MapPath.MODULES, reason + f" (still failing with {MAX_LEAVES} leaf modules)", (), {})


def _binding(fn: Any) -> Any:
    owner = sys.modules.get(getattr(fn, "__module__", None) or "")
    name = getattr(fn, "__name__", None)
    return getattr(owner, name, None) if owner is not None and isinstance(name, str) else None


def _bindings(gm: fx.GraphModule) -> dict[int, Any]:
    return {id(n.target): _binding(n.target) for n in gm.graph.nodes if n.op == "call_function"}


class _Interpreter(fx.Interpreter):
    """Calls each function as bound now, if that changed since tracing (a device patch, such as SDPA's)."""

    def __init__(self, gm: fx.GraphModule, bound: dict[int, Any]) -> None:
        super().__init__(gm)
        self.bound = bound

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        now = _binding(target)
        if callable(now) and now is not self.bound.get(id(target), now):
            target = now
        return super().call_function(target, args, kwargs)

    def interpret(self, *args: Any) -> Any:
        try:
            return self.run(*args)
        finally:
            self.env.clear()  # the interpreter must not keep the outputs alive


# --------------------------------------------------------------------------- shapes and FLOPs


@dataclass(frozen=True)
class _Out:
    shape: tuple[int, ...] = ()
    dtype: str = ""
    nbytes: int = 0


def _out_of(out: Any) -> _Out:
    tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not tensors:
        return _Out()
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return _Out(tuple(tensors[0].shape), str(tensors[0].dtype).removeprefix("torch."), nbytes)


class _Flops(TorchDispatchMode):
    """Each op's FLOPs (flop_counter's formulas, as the engine counts them) for the node running it: the
    innermost key in forward; in backward, the key that claimed the autograd node running."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = [""]
        self.autograd: dict[int, str] = {}
        self.forward: defaultdict[str, int] = defaultdict(int)
        self.backward: defaultdict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flops = count_flops(func, args, kwargs, out)
        if flops:
            node = torch._C._current_autograd_node()
            if node is None:
                self.forward[self.keys[-1]] += flops
            else:
                self.backward[self.autograd.get(node._sequence_nr(), "")] += flops
        return out


def _propagate(forward: Callable[..., Any], model: nn.Module, inputs: Batch, config: Config) -> None:
    """One forward (and backward in train mode) as the engine runs it, gradients left as they were."""
    from ..devices.gpu import gpu_target
    from ..engine.recipes import cast_inputs, cast_parameters
    from ..simulate import plan_for

    plan = plan_for(config)
    cast_parameters(model, config.recipe.dtype)
    inputs = cast_inputs(inputs, config.recipe.dtype)
    params = list(model.parameters())
    grads = [p.grad for p in params]
    train = config.mode == "train"
    try:
        with gpu_target(config), DeviceModel(config.device).patched(), torch.set_grad_enabled(train):
            with plan.autocast() if plan.autocast is not None else contextlib.nullcontext():
                out = forward(*inputs.args, **inputs.kwargs)
                loss = _loss(plan.loss_fn, out, inputs) if train else None
            del out
            if loss is not None:
                loss.backward()
    finally:
        for p, g in zip(params, grads, strict=True):
            p.grad = g


def _loss(loss_fn: LossFn, out: Any, inputs: Batch) -> torch.Tensor | None:
    if not any(t.requires_grad for t in floating_leaves(out)):
        return None
    return loss_fn(out, inputs)


class _Prop(_Interpreter):
    """Shapes into node.meta (as torch.fx.passes.shape_prop does), FLOPs per node, autograd nodes claimed."""

    def __init__(self, gm: fx.GraphModule, bound: dict[int, Any], flops: _Flops) -> None:
        super().__init__(gm, bound)
        self.flops = flops
        self.outs: dict[str, _Out] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.flops.keys.append(n.name)
        try:
            out = super().run_node(n)
        finally:
            self.flops.keys.pop()
        if any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            n.meta["tensor_meta"] = fx.node.map_aggregate(out, _tensor_meta)
        n.meta["type"] = type(out)
        self.outs[n.name] = _out_of(out)
        if torch.is_grad_enabled():
            claim(self.flops.autograd, out, n.name)
        return out


def _tensor_meta(obj: Any) -> Any:
    return _extract_tensor_metadata(obj) if isinstance(obj, torch.Tensor) else obj


def fx_nodes(traced: Traced, model: nn.Module, inputs: Batch, config: Config) -> tuple[NodeInfo, ...]:
    """Run the graph once on meta for shapes and FLOPs, and describe every node."""
    gm = traced.gm
    assert gm is not None
    with _Flops() as flops:
        prop = _Prop(gm, traced.bound, flops)
        _propagate(prop.interpret, model, inputs, config)
    seen: set[int] = set()
    return tuple(
        _fx_node(gm, n, i, prop.outs.get(n.name, _Out()), flops, seen) for i, n in enumerate(gm.graph.nodes)
    )


def _fx_node(
    gm: fx.GraphModule, n: fx.Node, index: int, out: _Out, flops: _Flops, seen: set[int]
) -> NodeInfo:
    params = [p for p in _node_params(gm, n) if id(p) not in seen]
    seen.update(id(p) for p in params)
    return NodeInfo(
        index=index,
        name=n.name,
        op=n.op,
        target=_target(gm, n),
        module=_owner(n),
        preds=tuple(a.name for a in n.all_input_nodes),
        calls=tuple(_calls(n)),
        shape=out.shape,
        dtype=out.dtype,
        out_bytes=out.nbytes,
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        flops=flops.forward.get(n.name, 0),
        backward_flops=flops.backward.get(n.name, 0),
    )


def _node_params(gm: fx.GraphModule, n: fx.Node) -> list[nn.Parameter]:
    if n.op == "call_module":
        return list(gm.get_submodule(str(n.target)).parameters())
    if n.op == "get_attr":
        value = _attr(gm, str(n.target))
        return [value] if isinstance(value, nn.Parameter) else []
    return []


def _attr(gm: fx.GraphModule, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name, None)


def _target(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(str(n.target))).__name__
    if n.op == "call_function":
        name = torch.overrides.resolve_name(n.target)
        return name or _builtin_name(n.target)
    return str(n.target)


def _builtin_name(target: Any) -> str:
    """A function's public name where `resolve_name` has none: its table is built once per process, and a
    function patched at that moment (a device rule's stand-in, while an earlier run simulated) is missing
    from it; the C builtins of `torch.nn.functional` are named from their own module."""
    name = str(getattr(target, "__name__", target))
    if getattr(target, "__module__", None) == "torch._C._nn" and hasattr(torch.nn.functional, name):
        return f"torch.nn.functional.{name}"
    return name


def _owner(n: fx.Node) -> str:
    """The module a node belongs to: the called module, a get_attr's owner, else the innermost module whose
    forward it was traced in (fx's nn_module_stack), "" for the model's own forward."""
    if n.op == "call_module":
        return str(n.target)
    if n.op == "get_attr":
        return str(n.target).rpartition(".")[0]
    stack = n.meta.get("nn_module_stack")
    if stack:
        return str(next(reversed(stack.values()))[0])
    return ""


# --------------------------------------------------------------------------- the module map


@contextlib.contextmanager
def _module_hooks(
    model: nn.Module, enter: Callable[[str], None], leave: Callable[[str, Any], None]
) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name, module in model.named_modules():
            stack.callback(module.register_forward_pre_hook(lambda m, a, name=name: enter(name)).remove)
            stack.callback(module.register_forward_hook(lambda m, a, o, name=name: leave(name, o)).remove)
        yield


def module_nodes(model: nn.Module, inputs: Batch, config: Config) -> tuple[NodeInfo, ...]:
    """A node per module (named_modules order); shapes and FLOPs from a run with module hooks, if it runs."""
    outs: dict[str, _Out] = {}
    flops = _Flops()

    def leave(name: str, out: Any) -> None:
        flops.keys.pop()
        outs.setdefault(name, _out_of(out))
        if torch.is_grad_enabled():
            claim(flops.autograd, out, name)

    with contextlib.suppress(Exception), flops, _module_hooks(model, flops.keys.append, leave):
        _propagate(model, model, inputs, config)
    seen: set[int] = set()
    return tuple(
        _module_node(i, path, m, outs.get(path, _Out()), flops, seen)
        for i, (path, m) in enumerate(model.named_modules())
    )


def _module_node(index: int, path: str, m: nn.Module, out: _Out, flops: _Flops, seen: set[int]) -> NodeInfo:
    params = [p for p in m.parameters(recurse=False) if id(p) not in seen]
    seen.update(id(p) for p in params)
    parent = path.rpartition(".")[0] or ROOT
    return NodeInfo(
        index=index,
        name=path or ROOT,
        op="call_module",
        target=type(m).__name__,
        module=path,
        preds=(parent,) if path else (),
        calls=(),
        shape=out.shape,
        dtype=out.dtype,
        out_bytes=out.nbytes,
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        flops=flops.forward.get(path, 0),
        backward_flops=flops.backward.get(path, 0),
    )


# --------------------------------------------------------------------------- the engine run


class _Runner(nn.Module):
    """Stands in for the model in the engine's program: the model's own submodule, parameter and buffer
    dicts (shared: names, owners, hooks and the optimizer see the model's), with `call` as its forward."""

    def __init__(self, model: nn.Module, call: Callable[..., Any]) -> None:
        super().__init__()
        for attr in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            self.__dict__[attr] = model.__dict__[attr]
        self.training = model.training
        self.call = call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)


def _runner(model: nn.Module, call: Callable[..., Any]) -> nn.Module:
    cls = type(type(model).__name__, (_Runner,), {})  # the engine's messages name the model's class
    runner: nn.Module = cls(model, call)
    return runner


def storage_ids(rec: Recorder, out: Any) -> tuple[int, ...]:
    """The recorder's ids of the storages behind the tensors in `out`."""
    sids: list[int] = []
    for t in tree_leaves(out):
        sid = rec.storage_id(t) if isinstance(t, torch.Tensor) else None
        if sid is not None and sid not in sids:
            sids.append(sid)
    return tuple(sids)


class _Recorded(_Interpreter):
    """Runs the graph under the engine's recorder: the node running is on every event, frees of values the
    interpreter dropped land at the start of the next node, autograd nodes are claimed for the fx node (and
    for its module, as the module hooks of an fx-inlined module would have)."""

    def __init__(self, traced: Traced, owners: dict[str, str], rec: Recorder, runs: list[NodeRun]) -> None:
        assert traced.gm is not None
        super().__init__(traced.gm, traced.bound)
        self.user_to_last_uses = eager_last_uses(traced.gm.graph)
        self.owners = owners
        self.rec = rec
        self.runs = runs

    def run_node(self, n: fx.Node) -> Any:
        rec = self.rec
        start = len(rec.events)  # seqs count events from 0
        rec.sweep()
        inlined = n.op in ("call_function", "call_method")
        module = self.owners.get(n.name, "")
        out = self._run(n, module if inlined else None)
        rec.claim_for_node(out, n.name)
        if inlined and rec.phase is Phase.FORWARD and torch.is_grad_enabled():
            claim(rec.node_module, out, module)
        self.runs.append(NodeRun(n.name, rec.iteration, start, len(rec.events), storage_ids(rec, out)))
        return out if n.users or n.op == "output" else None  # eager code drops an unused result at once

    def _run(self, n: fx.Node, module: str | None) -> Any:
        rec = self.rec
        with rec.in_module(module) if module is not None else contextlib.nullcontext(), rec.at_node(n.name):
            return super().run_node(n)


def eager_last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """After which node eager Python drops each value: its last user, or, for an argument of a module call
    that fx inlined, the call's last node (the caller holds its arguments until the call returns)."""
    nodes = list(graph.nodes)
    spans: dict[str, int] = {}  # module call (nn_module_stack key) -> index of its last node
    for i, n in enumerate(nodes):
        spans.update((key, i) for key in _calls(n))
    until: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        for v in n.all_input_nodes:
            held = [spans[key] for key in _calls(n) if key not in _calls(v)]
            until[v] = max([until.get(v, i), i, *held])
    drops: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for v, i in until.items():
        drops[nodes[i]].append(v)
    return dict(drops)


def _calls(n: fx.Node) -> list[str]:
    """The inlined module calls a node runs in (a call_module node's own module is called, not inlined)."""
    keys = list((n.meta.get("nn_module_stack") or {}).keys())
    return keys[:-1] if n.op == "call_module" else keys


def _interpreting(traced: Traced, runs: list[NodeRun]) -> Callable[..., Any]:
    assert traced.gm is not None
    gm = traced.gm
    owners = {n.name: _owner(n) for n in gm.graph.nodes}

    def call(*args: Any) -> Any:
        rec = active_recorder()
        if rec is None:
            return _Interpreter(gm, traced.bound).interpret(*args)
        return _Recorded(traced, owners, rec, runs).interpret(*args)

    return call


def _hooked(model: nn.Module, runs: list[NodeRun]) -> Callable[..., Any]:
    """The model's own forward, with a run recorded per module call (the module map's runs)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        found = active_recorder()
        if found is None:
            return model(*args, **kwargs)
        rec: Recorder = found
        starts: list[int] = []

        def enter(name: str) -> None:
            starts.append(len(rec.events))
            rec.sweep()

        def leave(name: str, out: Any) -> None:
            start = starts.pop()
            runs.append(NodeRun(name or ROOT, rec.iteration, start, len(rec.events), storage_ids(rec, out)))

        with _module_hooks(model, enter, leave):
            return model(*args, **kwargs)

    return call


def checkpoint_leaves(model: nn.Module, config: Config) -> list[str]:
    """Modules the recipe checkpoints run as leaves: the checkpointing wraps their forward."""
    if not config.recipe.checkpoint:
        return []
    from ..engine.recipes import checkpoint_targets

    return checkpoint_targets(model, config.recipe.checkpoint)


def build_map(
    model: nn.Module, inputs: Batch | Sequence[torch.Tensor], config: Config
) -> tuple[FxMap, Traced]:
    """The node map without an engine run (no runs): fx, fx with leaf modules, or modules."""
    inputs = as_batch(inputs)
    model.train(config.mode == "train")
    traced = trace_graph(model, checkpoint_leaves(model, config))
    if inputs.kwargs and traced.gm is not None:
        traced = Traced(None, MapPath.MODULES, "keyword inputs: the fx map takes positional ones", (), {})
    if traced.gm is not None:
        try:
            nodes = fx_nodes(traced, model, inputs, config)
            return FxMap(traced.path, traced.reason, traced.leaves, nodes), traced
        except Exception as exc:
            why = f"the fx graph did not run on meta: {first_line(exc)}"
            traced = Traced(None, MapPath.MODULES, traced.reason or why, (), {})
    nodes = module_nodes(model, inputs, config)
    return FxMap(traced.path, traced.reason, (), nodes), traced


def trace_with_map(
    model: nn.Module, inputs: Batch | Sequence[torch.Tensor], config: Config
) -> tuple[Trace, FxMap]:
    """What `simulate.trace_model` does, with every event attributed to a node of the map.

    On the fx paths the program runs the graph through an interpreter (the peak is the eager one); on the
    module path it runs the model itself, with module hooks recording each call.
    """
    from ..simulate import trace_model

    inputs = as_batch(inputs)
    fxmap, traced = build_map(model, inputs, config)
    runs: list[NodeRun] = []
    call = _interpreting(traced, runs) if traced.gm is not None else _hooked(model, runs)
    trace = trace_model(_runner(model, call), inputs, config)
    return trace, FxMap(fxmap.path, fxmap.reason, fxmap.leaves, fxmap.nodes, tuple(runs))


__all__ = ["FxMap", "MapPath", "NodeInfo", "NodeRun", "build_map", "trace_graph", "trace_with_map"]
