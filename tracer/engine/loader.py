"""Find the user's builder, call it on the meta device, and make the inputs.

The build never allocates model-sized memory: it runs under `torch.device("meta")`, and where a builder
insists on real tensors (an explicit device, `.to("cuda")`, data-dependent init), a patched build registers
every parameter and buffer on meta and makes init functions no-ops.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.errors import MemtraceError, first_line
from ..core.records import InputSpec
from ..core.specs import Target, parse_target
from ..meta.target_view import view_key
from .batch import Batch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class Built:
    model: nn.Module
    example_inputs: tuple[InputSpec, ...]
    path: str  # "meta" or "patched: <why>"


def load_object(target: Target | str, what: str = "builder", fresh: bool = False) -> Any:
    """`FILE.py:NAME` or `package.module:NAME`. A file is imported once per version, or anew with `fresh`
    (a step or loss file: what it makes at import, a GradScaler say, must not carry over between runs)."""
    if isinstance(target, str):
        target = parse_target(target, what)
    if target.is_file and fresh:
        module = _exec_file(Path(target.source), target.source) if Path(target.source).is_file() else None
        if module is None:
            raise MemtraceError(f"file not found: {target.source}")
    else:
        module = _load_file(target.source) if target.is_file else _import(target.source)
    obj: Any = module
    for part in target.attr.split("."):
        if not hasattr(obj, part):
            raise MemtraceError(f"{what} {target.text()!r}: {target.source} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


_LOADED: dict[tuple[str, int, tuple[str, int, int, int] | None], Any] = {}


def _load_file(source: str) -> Any:
    """Import a builder file once per version of it (fit and sweep build the model many times)."""
    path = Path(source)
    if not path.is_file():
        raise MemtraceError(f"file not found: {source}")
    key = (str(path.resolve()), path.stat().st_mtime_ns, view_key())  # what the import was told
    if key not in _LOADED:
        _LOADED[key] = _exec_file(path, source)
    return _LOADED[key]


def _exec_file(path: Path, source: str) -> Any:
    """The file as a module of its own name, one per version, in `sys.modules` (Dynamo, compiling its
    code, looks its globals up there)."""
    name = f"memtrace_user_{path.stem}_{len(_LOADED)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MemtraceError(f"cannot import {source}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise MemtraceError(f"importing {source} failed: {first_line(exc)}") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import(source: str) -> Any:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        raise MemtraceError(f"module not found: {source} ({first_line(exc)})") from exc
    except Exception as exc:
        raise MemtraceError(f"importing {source} failed: {first_line(exc)}") from exc


def build_on_meta(builder: Callable[..., Any], kwargs: dict[str, Any], name: str) -> Built:
    """Call the builder under the meta device; fall back to a patched build if that fails."""
    try:
        with torch.device("meta"):
            out = builder(**kwargs)
        model, examples = split_result(out, name)
        real = _real_tensors(model)
        if not real:
            return Built(model, examples, "meta")
        why = f"the builder made real tensors ({real[0]})"
    except MemtraceError:
        raise
    except Exception as exc:
        why = first_line(exc)
    try:
        out = _run_patched(builder, kwargs)
    except Exception as exc:
        from ..meta.compat_torchao import unsupported

        raise MemtraceError(unsupported(exc) or f"builder {name} raised {first_line(exc)}") from exc
    model, examples = split_result(out, name)
    _move_leftovers_to_meta(model)
    return Built(model, examples, f"patched ({why})")


def _run_patched(builder: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """The patched build; if the builder reads values it computed with torch (RegNet's widths:
    `torch.arange(depth) * w_a + w_0 ... .tolist()`, timm's `torch.linspace(...).tolist()`), which meta
    tensors do not have, again with those value-computing factories on the CPU."""
    try:
        with _patched_build():
            return builder(**kwargs)
    except Exception as exc:
        if not _reads_meta_values(exc):
            raise
    with _patched_build(values_on_cpu=True):
        return builder(**kwargs)


def _reads_meta_values(exc: BaseException) -> bool:
    text = str(exc)
    return "Cannot copy out of meta tensor" in text or "cannot be called on meta tensors" in text


def split_result(out: Any, name: str) -> tuple[nn.Module, tuple[InputSpec, ...]]:
    examples: tuple[InputSpec, ...] = ()
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        out, raw = out
        examples = specs_of(raw)
    if not isinstance(out, nn.Module):
        raise MemtraceError(f"builder {name} returned {type(out).__name__}, not an nn.Module")
    return out, examples


def specs_of(raw: Any) -> tuple[InputSpec, ...]:
    """Example inputs as specs: a tensor, a tuple/list of them (positional), or a dict (keyword inputs)."""
    if isinstance(raw, dict):
        return tuple(replace(spec_of(t), name=str(k)) for k, t in raw.items())
    items = raw if isinstance(raw, (tuple, list)) else (raw,)
    return tuple(spec_of(t) for t in items)


def spec_of(t: Any) -> InputSpec:
    if not isinstance(t, torch.Tensor):
        raise MemtraceError(f"example input of type {type(t).__name__} is not a tensor")
    if t.dtype not in DTYPE_NAMES:
        raise MemtraceError(f"example input dtype {t.dtype} is not supported")
    return InputSpec(tuple(int(d) for d in t.shape), DTYPE_NAMES[t.dtype])


def _real_tensors(model: nn.Module) -> list[str]:
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers())
    return [n for n, t in named if t.device.type != "meta"]


def _move_leftovers_to_meta(model: nn.Module) -> None:
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None and p.device.type != "meta":
                module._parameters[key] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
        for key, b in list(module._buffers.items()):
            if b is not None and b.device.type != "meta":
                module._buffers[key] = b.to("meta")


# Factories whose result is a computed value a builder may read (`.tolist()`, `.item()`), not storage to fill.
_VALUE_FACTORIES = frozenset(
    {"arange", "range", "linspace", "logspace", "tensor", "as_tensor", "asarray", "scalar_tensor"}
    | {"randperm", "tril_indices", "triu_indices", "fft_fftfreq", "fft_rfftfreq"}
)


class _StorageOnMeta(TorchFunctionMode):
    """Like `torch.device("meta")` for factories that allocate storage (empty, zeros, randn...); the
    value-computing ones (arange, linspace, tensor...) stay on the CPU so the builder can read them."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if kwargs.get("device") is None and func in _storage_factories():
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@functools.cache
def _storage_factories() -> frozenset[Any]:
    from torch.utils._device import _device_constructors

    return frozenset(f for f in _device_constructors() if f.__name__ not in _VALUE_FACTORIES)


@contextlib.contextmanager
def _patched_build(values_on_cpu: bool = False) -> Iterator[None]:
    """Parameters and buffers land on meta as they are registered; init and device moves do nothing (a
    `.to` that also names a dtype casts).

    Factory calls make meta tensors, or with `values_on_cpu` only the storage-allocating ones do
    (`_StorageOnMeta`): values computed with arange/linspace/tensor stay readable on the CPU (and land on
    meta if registered as a parameter or buffer).
    """
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, value: Any) -> None:
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def reg_param(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def reg_buffer(self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        if tensor is not None and tensor.device.type != "meta":
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    def same(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        return self

    module_to = nn.Module.to

    def to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        """The move does nothing; a dtype given (`.to(torch.bfloat16)`, `.to(device, dtype)`) still casts."""
        dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
        return module_to(self, dtype=dtype) if dtype is not None else self

    patch(nn.Module, "register_parameter", reg_param)
    patch(nn.Module, "register_buffer", reg_buffer)
    patch(nn.Module, "to", to)
    for attr in ("cuda", "cpu"):
        patch(nn.Module, attr, same)
    for attr in dir(nn.init):
        fn = getattr(nn.init, attr)
        if callable(fn) and attr.endswith("_") and not attr.startswith("_"):
            patch(nn.init, attr, lambda t, *a, **k: t)
    try:
        with _StorageOnMeta() if values_on_cpu else torch.device("meta"):
            yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def make_inputs(
    specs: Sequence[InputSpec], device: str | torch.device, targets: Sequence[InputSpec] = ()
) -> Batch:
    """The step's batch. Meta tensors are empty; real ones (the reference run) hold random normals for
    floating inputs, ids in [0, 2) for integer ones (any embedding accepts them), random booleans, and
    ones for an input named `attention_mask`."""
    gen = torch.Generator().manual_seed(0)
    args = tuple(_tensor(s, device, gen) for s in specs if s.name is None)
    kwargs = {s.name: _tensor(s, device, gen) for s in specs if s.name is not None}
    return Batch(args, kwargs, tuple(_tensor(s, device, gen) for s in targets))


def _tensor(spec: InputSpec, device: str | torch.device, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(int(d) for d in spec.shape)
    dtype = DTYPES[spec.dtype]
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    if spec.name == "attention_mask":
        return torch.ones(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) > 0.5).to(device)
    return torch.randint(0, 2, shape, generator=gen, dtype=dtype).to(device)
