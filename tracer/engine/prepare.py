"""Get a freshly built model ready for the simulated step: one probing forward on meta, before the optimizer.

Some models only get all their parameters in their first forward: lazy modules (`nn.LazyLinear`, whose
`UninitializedParameter` takes its shape from the first input) and modules that create a parameter inside
`forward` (`self.w = nn.Parameter(...)` on first call). The optimizer must see those parameters, so
`materialize` runs one forward under `torch.no_grad()` on meta (factories without a device make meta tensors,
the device patches active) before the optimizer is built. If nothing new appeared, every module's attributes
are put back as they were, so the probe leaves no state (caches, counters) behind that would change the step.

The probe is a whole forward (a third of a 70B step's simulation). `engine/trace.py` may go without it when no
module is lazy: the step then runs first, and only if it created a parameter, buffer or submodule
(`inventory` changed) is the model built again and probed, and the step traced again. A step that creates
nothing gives the events it gives after a probe, since the probe leaves no state behind.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..core.errors import MemtraceError, first_line
from ..meta.compiled import uncompiled

Snapshot = list[tuple[nn.Module, dict[str, Any]]]


def materialize(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Run one forward on meta if it can create parameters; return notes for the user."""
    notes = script_notes(model)
    lazy = lazy_names(model)
    before = inventory(model)
    saved = _snapshot(model)
    counted = full_length_packs()
    try:
        with _probing(model), uncompiled(model) as plain:
            plain(*args, **kwargs)
    except Exception as exc:
        _restore(saved)
        if lazy:
            raise MemtraceError(
                f"lazy modules ({', '.join(lazy[:3])}) could not be materialized by one forward on meta: "
                f"{first_line(exc)}"
            ) from exc
        return notes  # the step itself reports the failure, with its module
    if full_length_packs() > counted:
        notes.append(PACKED_NOTE)
    created = [name for name in inventory(model) if name not in before]
    if not lazy and not created:
        _restore(saved)
        return notes
    _move_to_meta(model)
    return notes + _materialized_notes(lazy, created)


PACKED_NOTE = (
    "pack_padded_sequence got its lengths on meta (no values): every sequence is packed at full length, the "
    "worst case; give the lengths as a CPU tensor or list in the model to simulate them"
)


def lazy_names(model: nn.Module) -> list[str]:
    """Modules that still hold an uninitialized (lazy) parameter or buffer."""
    found = []
    for name, module in model.named_modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if any(t is not None and is_lazy(t) for t in tensors):
            found.append(name or type(module).__name__)
    return found


def script_notes(model: nn.Module) -> list[str]:
    """TorchScript submodules take no Python hooks: their ops are attributed to the module around them."""
    scripted = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule) and not _inside_script(model, name)
    ]
    if not scripted:
        return []
    shown = ", ".join(scripted[:3]) + (f" and {len(scripted) - 3} more" if len(scripted) > 3 else "")
    return [f"TorchScript modules ({shown}) take no hooks: their memory is attributed to their parent module"]


def _inside_script(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), torch.jit.ScriptModule):
            return True
    return False


def inventory(model: nn.Module) -> set[str]:
    """Every parameter, buffer and submodule by qualified name."""
    names = {f"module {n}" for n, _ in model.named_modules()}
    names |= {f"parameter {n}" for n, _ in model.named_parameters(remove_duplicate=False)}
    names |= {f"buffer {n}" for n, _ in model.named_buffers(remove_duplicate=False)}
    return names


def _snapshot(model: nn.Module) -> Snapshot:
    """Each module's attributes, its dicts (parameters, buffers, submodules, hooks) copied one level deep."""
    saved = []
    for module in model.modules():
        attrs = {k: copy.copy(v) if isinstance(v, (dict, list, set)) else v for k, v in vars(module).items()}
        saved.append((module, attrs))
    return saved


def _restore(saved: Snapshot) -> None:
    for module, attrs in saved:
        current = vars(module)
        current.clear()
        current.update(attrs)


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """No autograd, factories on meta, the device patches (meta-safe ops), the training flag kept."""
    from .device_model import DeviceModel
    from .meta_cache import Replaying

    training = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), torch.device("meta"), DeviceModel("cpu").patched(), Replaying():
            yield
    finally:
        for m, flag in training:
            m.training = flag


def full_length_packs() -> int:
    from ..meta.compat_nn import FullLengthPacks

    return FullLengthPacks.count


def _move_to_meta(model: nn.Module) -> None:
    """Parameters or buffers the forward created on the CPU land on meta, like the patched build's."""
    from .loader import _move_leftovers_to_meta

    _move_leftovers_to_meta(model)


def _materialized_notes(lazy: list[str], created: list[str]) -> list[str]:
    notes = []
    if lazy:
        shown = ", ".join(lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
        notes.append(f"lazy modules ({shown}) were materialized by one forward on meta before the step")
    params = [n.split(" ", 1)[1] for n in created if not n.startswith("module ")]
    if params:
        shown = ", ".join(params[:3]) + (f" and {len(params) - 3} more" if len(params) > 3 else "")
        notes.append(
            f"the forward creates {shown}: one forward on meta made them before the optimizer was built"
        )
    return notes
