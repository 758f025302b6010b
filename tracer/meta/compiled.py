"""Compiled steps on meta: what a `torch.compile`d module or function allocates, as inductor plans it.

Dynamo traces the user's code on the meta tensors memtrace runs it with, AOTAutograd splits each graph into
forward and backward with inductor's min-cut partitioner (what it saves is what the backward gets), and
inductor lowers, fuses and plans the buffers for the CPU: its Python wrapper code (`empty_strided_cpu`,
`del buf`, `buf3 = buf1; del buf1  # reuse`, extern kernels such as `addmm(..., out=buf)`) is generated
without compiling a line of C++ (the C++ kernels become no-ops), then run on meta tensors. Every buffer the
wrapper allocates, keeps, reuses or frees reaches memtrace's dispatch-level recorder as it would the CPU
allocator; code between graph breaks runs eagerly, as without compiling.

- backends: `inductor` (planned as above), `aot_eager` (AOTAutograd's graphs run op by op), `eager`
  (Dynamo's graph op by op); each compile is said in the report, with its mode and how long it took;
- CUDA graphs (`reduce-overhead`, `max-autotune`) on a CUDA target are refused in one line, and so are the
  max-autotune modes, whose choices are made by timing kernels on the device;
- on a CUDA target the plan is inductor's CPU plan (its CUDA plan needs Triton and the device): the figure
  is given as the range between it and the eager step (`off`: torch.compile returns what it is given),
  analysis/compiled_range.py.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch

from ..core.errors import MemtraceError
from .compiled_layers import buffers_read, compiling, owned_source, root_of

BACKENDS = ("inductor", "aot_eager", "eager")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileOptions:
    """`--compile`, `--compile-mode`, `--compile-backend`: how the step's model is compiled."""

    backend: str = "inductor"
    mode: str = "default"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MemtraceError(f"--compile-backend {self.backend}: expected one of {', '.join(BACKENDS)}")
        if self.mode not in MODES:
            raise MemtraceError(f"--compile-mode {self.mode}: expected one of {', '.join(MODES)}")


def compile_options(compile_model: bool, mode: str | None, backend: str | None) -> CompileOptions | None:
    """`--compile`; `--compile-mode` or `--compile-backend` alone imply it."""
    if not compile_model and mode is None and backend is None:
        return None
    return CompileOptions(backend or "inductor", mode or "default")


@dataclass
class CompileLog:
    """What was compiled while the step ran, for the report."""

    cuda_target: bool
    off: bool = False  # torch.compile returns what it is given: the eager step the CUDA range is drawn to
    compiled: dict[str, None] = field(default_factory=dict)  # what, backend and mode, once each
    graphs: int = 0
    seconds: float = 0.0
    recompiled: list[tuple[str, str]] = field(default_factory=list)  # (on what, detail) per recompilation
    _inputs: dict[int, tuple[str, ...]] = field(default_factory=dict)  # each frame's last input shapes

    def saw(self, name: str, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        """One graph compiled: Dynamo's compile id says whether it recompiles a frame (its guards failed on
        the new call, e.g. a new sequence length), and the inputs' shapes say on what."""
        from torch._guards import CompileContext

        self.graphs += 1
        compile_id = CompileContext.current_compile_id()
        if compile_id is None or compile_id.frame_id is None:
            return
        shapes = tuple(_shape(t) for t in example_inputs if _is_input(t))
        before = self._inputs.get(compile_id.frame_id)
        self._inputs[compile_id.frame_id] = shapes
        if before is None or not compile_id.frame_compile_id:
            return
        changed = [(a, b) for a, b in zip(before, shapes, strict=False) if a != b] or [
            (", ".join(before), ", ".join(shapes))
        ]
        symbolic = [_shape(v) for v in _placeholders(gm) if _is_input(v) and _is_symbolic(v)]
        how = f", dynamic sizes {', '.join(symbolic)}" if symbolic else ""
        what = "new shapes" if before != shapes else "failed guards"
        self.recompiled.append((what, f"{name} {'; '.join(f'{a} then {b}' for a, b in changed)}{how}"))

    @property
    def planned_for_the_cpu(self) -> bool:
        """Inductor compiled for a CUDA target: its plan is the CPU's, the figure a range."""
        return self.cuda_target and any(" with inductor (" in c for c in self.compiled)

    def lines(self) -> tuple[str, ...]:
        if not self.compiled:
            return ()
        how = [text for backend, text in _HOW.items() if f" with {backend} (" in " ".join(self.compiled)]
        return (
            f"torch.compile: {'; '.join(self.compiled)}; {self.graphs} graph(s) compiled{self._recompiles()} "
            f"in {self.seconds:.1f} s, counted once; simulated as compiled: {'; '.join(how)}",
        )

    def _recompiles(self) -> str:
        if not self.recompiled:
            return ""
        n, whats = len(self.recompiled), {what for what, _ in self.recompiled}
        counted = f"{n} recompilation{'s' if n > 1 else ''}"
        if len(whats) == 1:
            return f" ({counted} on {whats.pop()}: {'; '.join(d for _, d in self.recompiled)})"
        return f" ({counted}: {'; '.join(f'on {w}, {d}' for w, d in self.recompiled)})"


def _is_input(t: Any) -> bool:
    """A tensor the step passes in (not a parameter or buffer, whose shapes do not change)."""
    return isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.dim() > 0


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape)


def _is_symbolic(t: torch.Tensor) -> bool:
    return any(isinstance(d, torch.SymInt) for d in t.shape)


def _placeholders(gm: torch.fx.GraphModule) -> list[Any]:
    return [node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")]


_HOW = {
    "inductor": "inductor's buffer plan for the CPU, run on meta",
    "aot_eager": "AOTAutograd's graphs op by op",
    "eager": "Dynamo's graphs op by op",
}


def _mode_of(kwargs: dict[str, Any]) -> str:
    mode = kwargs.get("mode") or "default"
    if mode not in MODES:
        raise MemtraceError(f"torch.compile(mode={mode!r}): expected one of {', '.join(MODES)}")
    return str(mode)


def _refuse_mode(mode: str, cuda_target: bool) -> None:
    if mode.startswith("max-autotune"):
        raise MemtraceError(
            f"torch.compile mode {mode}: not simulated (inductor picks its kernels by timing them on the "
            "device); use mode default"
        )
    if mode == "reduce-overhead" and cuda_target:
        raise MemtraceError(
            "torch.compile mode reduce-overhead on cuda: CUDA graphs' private memory pool is not modelled; "
            "use mode default"
        )


def _backend_of(kwargs: dict[str, Any]) -> str:
    backend = kwargs.get("backend", "inductor")
    if backend not in BACKENDS:
        raise MemtraceError(f"torch.compile(backend={backend!r}): memtrace simulates {', '.join(BACKENDS)}")
    return str(backend)


def _name(target: Any) -> str:
    target = getattr(target, "__wrapped__", target)
    owner = getattr(target, "__self__", None)  # Module.compile() compiles its bound `_call_impl`
    if isinstance(owner, torch.nn.Module):
        target = owner
    if isinstance(target, torch.nn.Module):
        return type(target).__name__
    return f"{getattr(target, '__qualname__', type(target).__name__)}()"


def compile_patch(
    log: CompileLog, real_compile: Callable[..., Any], machine: Callable[[], AbstractContextManager[None]]
) -> Callable[..., Any]:
    """`torch.compile` as user code sees it under memtrace: the real Dynamo, memtrace's backends, which see
    this machine's `torch.cuda` (`machine()`), not the target's."""

    def compile_(model: Any = None, **kwargs: Any) -> Any:
        if model is None:  # @torch.compile(...) as a decorator with arguments
            return lambda fn: compile_(fn, **kwargs)
        if log.off:
            return model
        backend, mode = _backend_of(kwargs), _mode_of(kwargs)
        _refuse_mode(mode, log.cuda_target)
        log.compiled.setdefault(f"{_name(model)} with {backend} (mode {mode})", None)
        rest = {k: v for k, v in kwargs.items() if k in ("fullgraph", "dynamic")}
        _skip_memtrace_frames()
        timed = _timed(log, (_name(model), root_of(model)), _BACKEND[backend], machine)
        return real_compile(model, backend=timed, **rest)

    return compile_


_NOT_COMPILED: list[Any] = []  # code objects of memtrace's hooks


def not_compiled(*functions: Callable[..., Any]) -> None:
    """Functions of memtrace's that a compiled region calls back (module hooks, saved-tensor hooks): Dynamo
    runs them, and what they call, as plain Python; traced inline, they check `is_compiling()`."""
    _NOT_COMPILED.extend(f.__code__ for f in functions)


def _skip_memtrace_frames() -> None:
    from torch._dynamo import eval_frame, types

    skip = types.FrameExecStrategy(types.FrameAction.SKIP, types.FrameAction.SKIP)  # type: ignore[attr-defined]
    for code in _NOT_COMPILED:
        eval_frame.set_code_exec_strategy(code, skip)  # type: ignore[attr-defined]


def compile_whole(model: torch.nn.Module, options: CompileOptions) -> None:
    """`--compile`: the whole model compiled, as the Trainer's `torch_compile` (accelerate's
    `torch.compile(model)`) does; Dynamo starts at the model's call, its own hooks left outside."""
    forward = model.forward

    @functools.wraps(forward)
    def whole(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    model.forward = torch.compile(whole, backend=options.backend, mode=options.mode)  # type: ignore[method-assign]


def module_not_compiled(self: torch.nn.Module, **kwargs: Any) -> None:
    """`Module.compile()` while compiling is off: the module runs as written."""


def module_compile(self: torch.nn.Module, **kwargs: Any) -> None:
    """`Module.compile()` under memtrace compiles the module's forward: its own hooks, which are memtrace's,
    run outside the compiled region (as an `OptimizedModule`'s do)."""
    self.forward = torch.compile(self.forward, **kwargs)  # type: ignore[method-assign]


def _timed(
    log: CompileLog,
    what: tuple[str, torch.nn.Module | None],
    backend: Callable[..., Any],
    machine: Callable[[], AbstractContextManager[None]],
) -> Callable[..., Any]:
    def compile_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        start = time.perf_counter()
        try:
            with machine(), compiling(what[1]):
                return backend(gm, example_inputs)
        finally:
            log.saw(what[0], gm, example_inputs)
            log.seconds += time.perf_counter() - start

    return compile_graph


def _eager(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
    return gm.forward


def _aot_eager(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
    from torch._dynamo.backends.debugging import aot_eager

    return aot_eager(gm, list(example_inputs))


def _cpu_fake(mode: Any, t: Any) -> Any:
    """A fake CPU tensor of `t`'s shape, strides and dtype: what inductor plans the CPU's buffers for."""
    from torch._subclasses.fake_tensor import FakeTensor

    if not isinstance(t, torch.Tensor):
        return t
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return FakeTensor(mode, meta, torch.device("cpu")).requires_grad_(t.requires_grad)


def _on_cpu(gm: torch.fx.GraphModule) -> None:
    """Calls in the graph that name the meta device name the CPU instead: factory calls' `device=`, and a
    positional device, such as HF GPT-2's `position_embeds.to(inputs_embeds.device)`."""
    from torch.fx.node import map_aggregate

    def cpu(a: Any) -> Any:
        return torch.device("cpu") if isinstance(a, torch.device) and a.type == "meta" else a

    for node in gm.graph.nodes:
        node.args, node.kwargs = map_aggregate(node.args, cpu), map_aggregate(node.kwargs, cpu)
    gm.recompile()


def _no_kernel(*args: Any, **kwargs: Any) -> Callable[..., None]:
    def kernel(*a: Any) -> None:
        return None

    return kernel


@contextmanager
def _kernels_not_built() -> Iterator[None]:
    """Inductor writes its C++ kernels but nothing compiles them; the modules loaded meanwhile (with
    no-op kernels) leave the code cache, so a real compile of the same code builds its own."""
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.codecache import PyCodeCache

    modules, no_attr = list(PyCodeCache.modules), dict(PyCodeCache.modules_no_attr)
    try:
        with mock.patch.object(AsyncCompile, "cpp_pybinding", _no_kernel):
            yield
    finally:
        PyCodeCache.modules[:] = modules
        PyCodeCache.modules_no_attr.clear()
        PyCodeCache.modules_no_attr.update(no_attr)


def _symbolic_cpu_fakes(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[Any] | None:
    """After a recompilation on new shapes Dynamo's graph has symbolic sizes (`s0`): CPU fakes of those sizes
    in Dynamo's own fake mode, so inductor plans for every size the graph serves, as the real compile does
    (a plan made for the example's sizes would be reused, wrong, for the next size). None when all static."""
    from torch._guards import TracingContext

    context = TracingContext.try_get()
    values = _placeholders(gm)
    if context is None or context.fake_mode is None or len(values) != len(example_inputs):
        return None
    if not any(isinstance(v, torch.SymInt) for v in values):
        return None
    with context.fake_mode:
        pairs = zip(values, example_inputs, strict=True)
        return [_symbolic_cpu(v) if isinstance(v, torch.Tensor) else t for v, t in pairs]


def _symbolic_cpu(v: torch.Tensor) -> torch.Tensor:
    cpu = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cpu")
    return cpu.requires_grad_(v.requires_grad)


def _inductor(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode

    _on_cpu(gm)
    symbolic = _symbolic_cpu_fakes(gm, example_inputs)
    with _kernels_not_built(), _lowered():
        if symbolic is not None:
            return compile_fx(gm, symbolic)
        fake_mode = FakeTensorMode()
        fakes = [_cpu_fake(fake_mode, t) for t in example_inputs]
        with fake_mode:
            return compile_fx(gm, fakes)


@contextmanager
def _lowered() -> Iterator[None]:
    """Inductor lowers the graph, not loaded from its caches: the lowering names each buffer's module
    (compiled_layers.py); only the C++ kernels, never built here, would be saved by them."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


_BACKEND: dict[str, Callable[..., Any]] = {"inductor": _inductor, "aot_eager": _aot_eager, "eager": _eager}


def _meta_shims(source: str, owners: dict[str, torch.nn.Module]) -> Callable[[list[Any]], Any]:
    """Inductor's wrapper code with its buffers on meta, each its module's, and its C++ kernels as no-ops."""
    source, owned = owned_source(source, owners)
    namespace: dict[str, Any] = {"_memtrace_owner": owned}
    with _kernels_not_built():
        exec(compile(source, "<inductor wrapper>", "exec"), namespace)  # inductor's own code
    namespace["empty_strided_cpu"] = _empty_meta
    namespace["reinterpret_tensor"] = _reinterpret
    # meta kernels may lay an extern kernel's output out otherwise than the CPU's (a convolution's channels
    # last): the bytes are the same, the layout checks are left out
    namespace["assert_size_stride"] = namespace["assert_alignment"] = _unchecked
    call: Callable[[list[Any]], Any] = namespace["call"]
    return call


def _empty_meta(size: Sequence[int], stride: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(size, stride, dtype=dtype, device="meta")


def _unchecked(*args: Any) -> None:
    return None


def _reinterpret(t: torch.Tensor, size: Sequence[int], stride: Sequence[int], offset: int) -> torch.Tensor:
    return t.as_strided(size, stride, t.storage_offset() + offset)


@contextmanager
def compiled_graphs_on_meta() -> Iterator[None]:
    """Inductor's compiled graphs, called with meta tensors, run their wrapper code on meta."""
    from torch._inductor.output_code import CompiledFxGraph

    _fresh_dynamo()
    real_call = CompiledFxGraph.__call__
    calls: dict[str, Callable[[list[Any]], Any]] = {}
    owners: dict[str, dict[str, torch.nn.Module]] = {}

    def call(self: CompiledFxGraph, inputs: list[Any]) -> Any:
        if not any(isinstance(t, torch.Tensor) and t.is_meta for t in inputs):
            return real_call(self, inputs)
        source = self.source_code
        if source not in calls:
            calls[source] = _meta_shims(source, owners.get(source, {}))
        return calls[source](inputs)  # the wrapper clears the list: inputs die as in the real call

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(CompiledFxGraph, "__call__", call))
        stack.enter_context(buffers_read(owners))
        stack.enter_context(_lowered())  # a backward compiles lazily, at its first call, here too
        yield


def _fresh_dynamo() -> None:
    """Dynamo as a fresh process has it: an earlier compile in this process (a real run's, `verify`'s) leaves
    its automatic-dynamic sizes behind, and the step's first graph would be compiled dynamic, not as the
    user's run compiles it."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


def forget_compiled(log: CompileLog) -> None:
    """Dynamo's caches hold the meta model's graphs: a later simulation (or a real run) compiles afresh."""
    if log.compiled:
        torch._dynamo.reset()


@contextmanager
def uncompiled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model as written, for a probe under a dispatch mode: Dynamo would skip the compiled frames there
    and remember them as skipped."""
    inner = getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model
    held = [(m, m._compiled_call_impl) for m in inner.modules() if m._compiled_call_impl is not None]
    for m, _ in held:
        m._compiled_call_impl = None
    try:
        yield inner
    finally:
        for m, compiled in held:
            m._compiled_call_impl = compiled
