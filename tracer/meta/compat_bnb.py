"""bitsandbytes' quantized weights on meta, as bitsandbytes keeps them on the target.

bitsandbytes quantizes a `Params4bit` or an `Int8Params` when its module moves to a device
(`Params4bit.to` -> `_quantize`, nn/modules.py); a model built by memtrace stays on meta and never moves, so
its weights would stay in the compute dtype and `Linear4bit.forward` fails on them
(`fix_4bit_weight_quant_state_from_module` asserts). `quantize_on_meta` runs bitsandbytes' own `_quantize`
on meta instead: the ops are `torch.ops.bitsandbytes.*` with fake (meta) kernels in `bitsandbytes/_ops.py`,
so the weight is left exactly as on the device: packed uint8 data ((n + 1) // 2, 1), fp32 absmax per block
and a copy of the 16-value code table; under double quantization uint8 absmax, a fp32 offset, and the
second level's fp32 absmax and 256-value code. LLM.int8's `Int8Params` get int8 data and fp32 row scales
(`SCB`). bitsandbytes' module-level table cache (`functional.name2qmap`) is left as it was, so no meta
tensor leaks into a real quantization later.

While the builder runs on meta (`moving_quantizes`), a model holding bitsandbytes weights that the builder
moves to a device (`model.to("cpu")`, `model.cuda()`) is quantized there and stays on meta, as the move
quantizes it on the device: code that needs the quantized weight inside the builder (PEFT's DoRA takes
the weight's norm from it) finds it.

`held_tensors` lists the storages a quantized weight keeps beside its data (the quant state's), which exist
before the step as the weights do. Nothing here imports bitsandbytes unless the user's code did.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..core.errors import MemtraceError, first_line
from .managed import managed_memory


def _bnb() -> Any:
    return sys.modules.get("bitsandbytes")


def quantize_on_meta(model: nn.Module) -> list[str]:
    """Quantize every bitsandbytes weight still in its compute dtype, on meta, as `.to(device)` would;
    return a note for the user when any was."""
    bnb = _bnb()
    if bnb is None:
        return []
    count = 0
    cache = getattr(bnb.functional, "name2qmap", None)
    saved = dict(cache) if cache is not None else None
    try:
        for module in model.modules():
            if isinstance(module, torch.jit.ScriptModule):  # TorchScript's parameters, never bitsandbytes'
                continue
            count += _rehome(bnb, module)
            for param in module._parameters.values():
                if param is not None and param.device.type == "meta" and _unquantized(bnb, param):
                    _quantize(bnb, param)
                    count += 1
    finally:
        if cache is not None and saved is not None:
            cache.clear()
            cache.update(saved)
    if not count:
        return []
    return [f"{count} bitsandbytes weights are held quantized on meta, as on the device the model moves to"]


def _rehome(bnb: Any, module: nn.Module) -> int:
    """A `Linear4bit` whose weight lost its `Params4bit` on the way to meta (a patched build registers
    plain parameters) but kept its quantized data and the module's `quant_state` (quantized for real while
    the builder loaded it): the weight as bitsandbytes holds it again, its state moved to meta."""
    state = getattr(module, "quant_state", None)
    weight = module._parameters.get("weight")
    if state is None or weight is None or isinstance(weight, bnb.nn.Params4bit):
        return 0
    if weight.device.type != "meta" or weight.dtype == torch.float32:
        return 0
    state.to("meta")
    module._parameters["weight"] = bnb.nn.Params4bit(
        weight.data, requires_grad=False, quant_state=state, bnb_quantized=True, module=module
    )
    return 1


def _unquantized(bnb: Any, param: nn.Parameter) -> bool:
    if isinstance(param, bnb.nn.Params4bit):
        return not param.bnb_quantized
    if isinstance(param, bnb.nn.Int8Params):
        return not param.has_fp16_weights and param.dtype != torch.int8
    return False


def _quantize(bnb: Any, param: Any) -> None:
    """bitsandbytes' own quantization, on meta; its code tables are built from Python lists
    (`create_dynamic_map` reads values with `.tolist()`), so on the CPU even while a builder runs under
    `torch.device("meta")`, then moved to the weight's device (meta)."""
    try:
        with torch.device("cpu"):
            param._quantize(torch.device("meta"))
    except Exception as exc:
        raise MemtraceError(
            f"bitsandbytes could not quantize a {type(param).__name__} of shape {tuple(param.shape)} "
            f"on meta: {first_line(exc)}"
        ) from exc


def held_tensors(model: nn.Module) -> Iterator[tuple[torch.Tensor, str]]:
    """The tensors each quantized weight keeps beside its data (absmax, code tables, offsets, row scales),
    with the name of the module holding the weight. A 4-bit weight's quant state is found on the weight or,
    once FSDP has replaced the weight by its shard, on its module (`Linear4bit.quant_state`)."""
    bnb = _bnb()
    if bnb is None:
        return
    for name, state in quant_states(model):
        for t in _state_tensors(state):
            yield t, name
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if isinstance(param, bnb.nn.Int8Params):
                for t in (param.SCB,):
                    if isinstance(t, torch.Tensor):
                        yield t, name
        state = getattr(module, "state", None)
        if bnb is not None and isinstance(state, bnb.MatmulLtState):
            for t in (state.SCB,):
                if isinstance(t, torch.Tensor):
                    yield t, name


def quant_states(model: nn.Module) -> list[tuple[str, Any]]:
    """Each 4-bit weight's `QuantState` once, with the name of its module: the weight's own, else the
    module's (bitsandbytes keeps it there too, for FSDP, which replaces the weight)."""
    bnb = _bnb()
    if bnb is None:
        return []
    found: dict[int, tuple[str, Any]] = {}
    for name, module in model.named_modules():
        weights = [p for p in module._parameters.values() if isinstance(p, bnb.nn.Params4bit)]
        for state in [p.quant_state for p in weights] + [getattr(module, "quant_state", None)]:
            if isinstance(state, bnb.functional.QuantState) and id(state) not in found:
                found[id(state)] = (name, state)
    return list(found.values())


def quant_states_as(model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Every quant state's tensors replaced by `make(tensor)` (FSDP's simulated ranks: meta to fake CPU,
    as the parameters go; the tensors are not parameters, so `to_empty` leaves them)."""
    for _, state in quant_states(model):
        for holder in (state, getattr(state, "state2", None)):
            for key in ("absmax", "code", "offset"):
                value = getattr(holder, key, None)
                if isinstance(value, torch.Tensor):
                    setattr(holder, key, make(value))


def _state_tensors(state: Any) -> Iterator[torch.Tensor]:
    """A `QuantState`'s tensors, its nested state's included."""
    for value in (state.absmax, state.code, getattr(state, "offset", None)):
        if isinstance(value, torch.Tensor):
            yield value
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from _state_tensors(nested)


@contextlib.contextmanager
def moving_quantizes() -> Iterator[None]:
    """While a builder runs: `Module.to(device)`, `.cpu()` and `.cuda()` of a meta model with bitsandbytes
    weights quantize them on meta and keep the model there."""
    saved = {name: getattr(nn.Module, name) for name in ("to", "cpu", "cuda")}
    nn.Module.to = _moving(saved["to"], lambda *a, **k: torch._C._nn._parse_to(*a, **k)[:2])  # type: ignore[method-assign]
    nn.Module.cpu = _moving(saved["cpu"], lambda *a, **k: (torch.device("cpu"), None))  # type: ignore[method-assign]
    nn.Module.cuda = _moving(saved["cuda"], lambda *a, **k: (torch.device("cuda"), None))  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.Module, name, fn)


def _moving(original: Callable[..., Any], parse: Callable[..., Any]) -> Callable[..., Any]:
    def move(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        device, dtype = parse(*args, **kwargs)
        if device is None or device.type == "meta" or dtype is not None or not _holds_bnb_on_meta(self):
            return original(self, *args, **kwargs)
        quantize_on_meta(self)
        return self

    return move


def _holds_bnb_on_meta(model: nn.Module) -> bool:
    bnb = _bnb()
    if bnb is None:
        return False
    kinds = (bnb.nn.Params4bit, bnb.nn.Int8Params)
    return any(isinstance(p, kinds) and p.device.type == "meta" for p in model.parameters())


PAGED_MIN_ELEMENTS = 100_000  # `Optimizer8bit.get_state_buffer`: smaller states are ordinary tensors


@contextlib.contextmanager
def paged_state_on_meta(managed: bool) -> Iterator[None]:
    """bitsandbytes' paged optimizers (`PagedAdamW`, `PagedAdamW8bit`, `is_paged=True`) on meta parameters.

    `Optimizer8bit.get_state_buffer` (optim/optimizer.py) makes a state of 1e5 elements or more with
    `F.get_paged` (`cudaMallocManaged`, CUDA unified memory) on a CUDA device, and an ordinary `zeros_like` on
    the CPU (paged falls back to plain there) or for smaller states. On meta the paged call cannot run: the
    state is made by `zeros_like`, in managed memory (`managed_memory()`: filed apart from the caching
    allocator) when `managed` (the CUDA target), as an ordinary tensor otherwise."""
    base = getattr(sys.modules.get("bitsandbytes.optim.optimizer"), "Optimizer8bit", None)
    if base is None:
        yield
        return
    original = base.get_state_buffer

    def get_state_buffer(self: Any, p: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if p.device.type != "meta":
            return original(self, p, dtype)  # type: ignore[no-any-return]
        paged = managed and self.is_paged and p.numel() >= PAGED_MIN_ELEMENTS
        with managed_memory() if paged else contextlib.nullcontext():
            return torch.zeros_like(p, dtype=dtype, device=p.device)

    base.get_state_buffer = get_state_buffer
    try:
        yield
    finally:
        base.get_state_buffer = original


def check_fsdp_storage(model: nn.Module, param_dtype: torch.dtype | None) -> None:
    """FSDP shards a 4-bit weight as elements of its `quant_storage` (`bnb_4bit_quant_storage`), and its
    mixed precision casts every floating-point parameter to `param_dtype` before the all-gather: a packed
    weight stored as another floating dtype is converted value by value, its bytes no longer the packed
    codes (a real run fails in `dequantize_4bit` on the wrong size). Recipes store them as the param dtype
    (bf16). Integer storage (uint8, the default) FSDP2 gathers uncast."""
    bnb = _bnb()
    if bnb is None or param_dtype is None:
        return
    for name, param in model.named_parameters():
        if not isinstance(param, bnb.nn.Params4bit) or not param.bnb_quantized:
            continue
        storage = param.dtype
        if storage.is_floating_point and storage != param_dtype:
            raise MemtraceError(
                f"--fsdp-param-dtype {_short(param_dtype)} would cast {name}, 4-bit weights packed as "
                f"{_short(storage)} (bnb_4bit_quant_storage): store them as {_short(param_dtype)}, "
                "as FSDP-QLoRA recipes do, or as uint8"
            )


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


@contextlib.contextmanager
def fake_weights_keep_quant_state() -> Iterator[None]:
    """On simulated ranks (fake tensors): DDP and FSDP replace a `Linear4bit`'s `Params4bit` by a plain
    parameter (FSDP's unsharded weight is a view of its all-gather output); `Linear4bit.forward` then wraps
    it in a `Params4bit` again with the module's quant state (`fix_4bit_weight_quant_state_from_module`),
    which a fake tensor cannot become (`Tensor._make_subclass` of a tensor subclass). There the quant state
    is set on the fake weight itself: the same data and state, nothing allocated, as the wrap on a real rank
    (an alias)."""
    from torch._subclasses.fake_tensor import FakeTensor

    modules: Any = sys.modules.get("bitsandbytes.nn.modules")
    original = getattr(modules, "fix_4bit_weight_quant_state_from_module", None)
    if modules is None or original is None:
        yield
        return

    def fix(module: nn.Module) -> None:
        weight = module.weight
        if isinstance(weight, FakeTensor) and getattr(weight, "quant_state", None) is None:
            weight.quant_state = module.quant_state  # type: ignore[attr-defined]
            return
        original(module)

    modules.fix_4bit_weight_quant_state_from_module = fix
    try:
        yield
    finally:
        modules.fix_4bit_weight_quant_state_from_module = original
