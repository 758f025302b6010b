"""What user code sees of the GPU while memtrace runs it: the target GPU, not this machine.

Training scripts ask the machine at import time: nanoGPT's `train.py` picks its dtype with
`torch.cuda.is_available() and torch.cuda.is_bf16_supported()` and makes `torch.amp.autocast("cuda")` at
module level, which PyTorch disables (with a warning) where CUDA is absent. While the builder's module, the
step's module, the builder and the step run, `torch.cuda`'s questions are answered for the `--gpu` target
(the default architecture without one); under `--device cpu` there is no GPU, as on a CPU machine.

- answered for the target: `is_available`, `device_count`, `current_device`, `get_device_capability`,
  `get_device_name`, `get_device_properties` (name, major, minor, total_memory), `is_bf16_supported`,
  `mem_get_info` (the GPU's memory, all free);
- no-ops: `set_device`, `synchronize`, `reset_peak_memory_stats` and the like;
- answered, with a note: `memory_allocated` and its siblings read 0 (memtrace's own figures are the answer),
  `empty_cache` releases nothing in the simulation;
- refused in one line: a device property memtrace does not know for the target;
- `torch.compile` (and `Module.compile()`) compiles with memtrace's backends (compiled.py), said in a note.

`verify`'s real run and memtrace's own code outside these regions see the real machine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch

from ..core.errors import MemtraceError
from ..core.presets import PRESETS, normalise_gpu_name
from ..core.records import GpuSpec
from .compiled import (
    CompileLog,
    compile_patch,
    compiled_graphs_on_meta,
    forget_compiled,
    module_compile,
    module_not_compiled,
)

DEFAULT_PRESET = "a100-80gb"  # with no --gpu: the architecture the report assumes (sm80)


@dataclass(frozen=True)
class TargetGpu:
    """The GPU user code is told about: its driver name, capability and memory."""

    label: str  # as memtrace names it: the preset, or the size given
    name: str  # as `torch.cuda.get_device_name()` says it
    major: int
    minor: int
    total_memory: int


def target_gpu(device: str, gpu: GpuSpec | None, arch: str | None) -> TargetGpu | None:
    """The GPU of a simulation: None on `--device cpu`; a size alone has the assumed architecture."""
    if device != "cuda":
        return None
    default = PRESETS[DEFAULT_PRESET]
    preset = PRESETS.get(normalise_gpu_name(gpu.name)) if gpu is not None else default
    major, minor = (int(p) for p in (arch or (preset or default).compute_capability).split(".")[:2])
    if gpu is None:
        return TargetGpu(
            f"{default.name} (no --gpu: assumed)",
            f"NVIDIA {default.description}",
            major,
            minor,
            default.memory_bytes,
        )
    if preset is None:
        return TargetGpu(
            f"{gpu.name} (sm{major}{minor} assumed)", f"a GPU of {gpu.name}", major, minor, gpu.bytes
        )
    return TargetGpu(preset.name, f"NVIDIA {preset.description}", major, minor, gpu.bytes)


@dataclass
class Seen:
    """What user code asked while the view was up: each question once, and the notes they call for."""

    target: TargetGpu | None
    asked: dict[str, None] = field(default_factory=dict)
    notes: dict[str, None] = field(default_factory=dict)
    compiled: CompileLog = field(init=False)
    compiling: bool = True  # off: torch.compile returns what it is given

    def __post_init__(self) -> None:
        self.compiled = CompileLog(cuda_target=self.target is not None, off=not self.compiling)

    def ask(self, what: str) -> None:
        self.asked.setdefault(what, None)

    def note(self, text: str) -> None:
        self.notes.setdefault(text, None)

    def lines(self) -> tuple[str, ...]:
        """The report's notes: what was answered for which GPU, then what could not be simulated."""
        if not self.asked:
            return (*self.notes, *self.compiled.lines())
        asked = ", ".join(self.asked)
        where = (
            f"for {self.target.label} (sm{self.target.major}{self.target.minor})"
            if self.target is not None
            else "as on a machine with no GPU (--device cpu)"
        )
        asked_line = f"your code asked torch.cuda ({asked}): answered {where}"
        return (asked_line, *self.notes, *self.compiled.lines())


class _Properties:
    """`torch.cuda.get_device_properties()` of the target: what memtrace knows, one line for the rest."""

    def __init__(self, target: TargetGpu) -> None:
        self.name, self.major, self.minor = target.name, target.major, target.minor
        self.total_memory = target.total_memory
        self.is_integrated = False
        self._label = target.label

    def __getattr__(self, attr: str) -> Any:
        raise MemtraceError(
            f"your code read torch.cuda.get_device_properties().{attr}, which memtrace does not know for "
            f"{self._label}: it knows name, major, minor and total_memory"
        )


_ACTIVE: list[Seen] = []


def active_view() -> Seen | None:
    """The view user code is running under, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def view_key() -> tuple[str, int, int, int] | None:
    """What a module imported under the view was told (a builder file imported for one target is not reused
    for another, nor for `verify`'s real run)."""
    seen = active_view()
    if seen is None:
        return None
    t = seen.target
    off = "" if seen.compiling else " (torch.compile off)"
    return (f"cpu{off}", 0, 0, 0) if t is None else (f"{t.name}{off}", t.major, t.minor, t.total_memory)


# Libraries that import their CUDA kernels when `torch.cuda.is_available()` at import: they are told the
# truth of this machine (bitsandbytes' CUDA backend needs a CUDA build of torch to import).
_KERNEL_LIBRARIES = frozenset({"bitsandbytes"})


def _caller() -> str:
    """The module of the code that asked torch.cuda, past this module's own wrappers (they stack)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", "")) if frame is not None else ""


def _machine_for_kernels(machine: Callable[[], bool], target: Callable[[], bool]) -> Callable[[], bool]:
    def is_available() -> bool:
        return machine() if _caller() in _KERNEL_LIBRARIES else target()

    return is_available


def _answers(seen: Seen) -> dict[str, Callable[..., Any]]:
    t = seen.target

    def asked(what: str, value: Callable[..., Any]) -> Callable[..., Any]:
        def answer(*args: Any, **kwargs: Any) -> Any:
            seen.ask(what)
            return value(*args, **kwargs)

        return answer

    def no_gpu(what: str) -> Callable[..., Any]:  # one function a name: dynamo refuses shared objects
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise MemtraceError(f"your code called torch.cuda.{what}() under --device cpu: there is no GPU")

        return refuse

    answers: dict[str, Callable[..., Any]] = {
        "is_available": _machine_for_kernels(
            torch.cuda.is_available, asked("is_available", lambda: t is not None)
        ),
        "device_count": asked("device_count", lambda: int(t is not None)),
        "is_bf16_supported": asked(
            "is_bf16_supported",
            lambda including_emulation=True: t is not None and (t.major >= 8 or bool(including_emulation)),
        ),
    }
    if t is None:
        return {**answers, **{name: no_gpu(name) for name in _QUESTIONS}}
    answers |= {
        "current_device": asked("current_device", lambda: 0),
        "get_device_capability": asked("get_device_capability", lambda device=None: (t.major, t.minor)),
        "get_device_name": asked("get_device_name", lambda device=None: t.name),
        "get_device_properties": asked("get_device_properties", lambda device=None: _Properties(t)),
        "mem_get_info": asked("mem_get_info", lambda device=None: (t.total_memory, t.total_memory)),
    }
    return answers | _silenced(seen)


_QUESTIONS = ("current_device", "get_device_capability", "get_device_name", "get_device_properties")
_NO_OPS = (
    "set_device",
    "synchronize",
    "reset_peak_memory_stats",
    "reset_max_memory_allocated",
    "reset_accumulated_memory_stats",
    "ipc_collect",
)
_FIGURES = ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved")


def _silenced(seen: Seen) -> dict[str, Callable[..., Any]]:
    """No-ops, and the memory figures, which the simulation answers itself."""

    def nothing() -> Callable[..., None]:  # one function a name: dynamo refuses shared objects
        def ignore(*args: Any, **kwargs: Any) -> None:
            return None

        return ignore

    def figure(name: str) -> Callable[..., int]:
        def read(device: Any = None) -> int:
            seen.note(
                f"torch.cuda.{name}() in your code read 0 (the simulated figures are memtrace's report)"
            )
            return 0

        return read

    def empty_cache() -> None:
        seen.note("torch.cuda.empty_cache() in your code is not simulated: cached segments are kept")

    return {
        **{name: nothing() for name in _NO_OPS},
        **{name: figure(name) for name in _FIGURES},
        "empty_cache": empty_cache,
    }


# torch.compile's own machinery: it compiles on this machine, whatever the target
_COMPILER = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._subclasses", "torch.fx")


def _compiler_sees_machine(
    answers: dict[str, Callable[..., Any]], machine: dict[str, Callable[..., Any]]
) -> dict[str, Callable[..., Any]]:
    def routed(name: str, answer: Callable[..., Any]) -> Callable[..., Any]:
        real = machine.get(name)
        if real is None:
            return answer

        def route(*args: Any, **kwargs: Any) -> Any:
            return real(*args, **kwargs) if _caller().startswith(_COMPILER) else answer(*args, **kwargs)

        return route

    return {name: routed(name, answer) for name, answer in answers.items()}


@contextmanager
def _patched(owner: Any, values: dict[str, Any]) -> Iterator[None]:
    saved = {name: getattr(owner, name) for name in values if hasattr(owner, name)}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name in values:
            if name in saved:
                setattr(owner, name, saved[name])
            else:
                delattr(owner, name)


@contextmanager
def target_view(target: TargetGpu | None, compiling: bool = True) -> Iterator[Seen]:
    """User code sees `target` (None: no GPU) in `torch.cuda`; re-entrant (the innermost view answers).
    With `compiling` off, `torch.compile` returns what it is given (the eager step of a compiled one)."""
    seen = active_view()
    if seen is not None and seen.target == target and seen.compiling == compiling:
        yield seen
        return
    seen = Seen(target, compiling=compiling)
    with ExitStack() as stack:
        answers = _answers(seen)
        machine = {name: getattr(torch.cuda, name) for name in answers if hasattr(torch.cuda, name)}
        stack.enter_context(_patched(torch.cuda, _compiler_sees_machine(answers, machine)))
        compile_ = compile_patch(seen.compiled, torch.compile, lambda: _patched(torch.cuda, machine))
        stack.enter_context(_patched(torch, {"compile": compile_}))
        module_compile_ = module_compile if compiling else module_not_compiled
        stack.enter_context(_patched(torch.nn.Module, {"compile": module_compile_}))
        stack.enter_context(compiled_graphs_on_meta())
        stack.callback(forget_compiled, seen.compiled)
        _ACTIVE.append(seen)
        stack.callback(_ACTIVE.pop)
        yield seen
