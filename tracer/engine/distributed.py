"""DDP and FSDP2 simulated on PyTorch's own code: one process plays one rank of an N-rank job.

`simulated_world(parallel, rec)` initialises PyTorch's fake process group (`FakeStore`, backend `fake`, from
`torch.testing._internal.distributed.fake_pg`) for N ranks and, when the model is wrapped, enters
`FakeTensorMode`: the model's meta tensors become fake CPU tensors, which `DistributedDataParallel` and
`fully_shard` accept (both refuse meta: DDP reads parameter values at construction, FSDP2 asks for
materialised parameters). The engines then allocate what they allocate for real: DDP's gradient buckets,
FSDP2's sharded parameters, its all-gather and reduce-scatter buffers, the sharded gradients and optimizer
state. Collectives do nothing (the fake group), so every rank's storages are rank 0's shapes, except where
shards are uneven (`--rank`).

Named patches, each needed because a fake tensor has no data:
- DDP is built with `init_sync=False` (its constructor's parameter check and broadcast read values) and a comm
  hook that returns the bucket as reduced (the fake group's all-reduce future holds no tensor). The real
  engine's built-in all-reduce writes the bucket in place, so memory is the same.
- The storages the engines allocate inside their collective steps are the `communication` category: DDP's
  buckets (made by its constructor), FSDP2's unshard (all-gather) and post-backward (reduce-scatter) steps.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from ..core.errors import MemtraceError
from ..core.parallel import WRAP_AUTO, WRAP_ROOT, Parallel
from ..core.records import Category
from ..meta.compat_bnb import check_fsdp_storage, fake_weights_keep_quant_state, quant_states_as
from .batch import Batch
from .dispatch import RecordingMode
from .recorder import Recorder

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def wrap_model(
    model: nn.Module, parallel: Parallel, mesh: Any, simulated: bool = False, init_sync: bool = True
) -> nn.Module:
    """The model as the step calls it: `DistributedDataParallel(model)`, or the model after `fully_shard` of
    the `--fsdp-wrap` modules (innermost first) and of the root. The same code for the simulation and for a
    real run (`simulated` adds the named patches; `init_sync` is DDP's, off when simulated)."""
    if parallel.engine == "ddp":
        return _ddp(model, parallel, simulated, init_sync and not simulated)
    _fsdp(model, parallel, mesh)
    return model


def _ddp(model: nn.Module, parallel: Parallel, simulated: bool, init_sync: bool) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    kwargs: dict[str, Any] = {"init_sync": init_sync}
    if parallel.bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = parallel.bucket_cap_mb
    wrapped = DistributedDataParallel(model, **kwargs)
    if simulated:
        wrapped.register_comm_hook(None, _reduced_in_place)
        wrapped._distributed_broadcast_coalesced = _broadcast_coalesced  # type: ignore[method-assign]
        wrapped.reducer = _KeptBuckets(wrapped.reducer)  # type: ignore[assignment]
    return wrapped


class _KeptBuckets:
    """DDP's reducer, less the bucket rebuild at the second forward: the rebuild broadcasts the new bucket
    order (values a fake tensor lacks) and then re-splits the same gradient bytes into new buckets, so the
    buckets built at construction hold as many bytes. Everything else goes to the reducer itself."""

    def __init__(self, reducer: Any) -> None:
        self._reducer = reducer

    def _rebuild_buckets(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


def _broadcast_coalesced(tensors: list[torch.Tensor], buffer_size: int, authoritative_rank: int = 0) -> None:
    """`dist._broadcast_coalesced` (the buffers' broadcast before each forward), as comm.cpp allocates: one
    flat tensor per bucket of `buffer_size` bytes, freed when its broadcast is done."""
    for chunk in torch._utils._take_tensors(tensors, buffer_size):
        flat = torch._utils._flatten_dense_tensors(chunk)
        del flat


def _reduced_in_place(state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """The bucket, as the built-in all-reduce leaves it (in place, divided by the world size)."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


_reduced_in_place.__annotations__ = {}  # DDP checks the hook's annotations, which here are strings


def fsdp_targets(model: nn.Module, globs: tuple[str, ...]) -> list[str]:
    """The modules sharded besides the root: `auto` (no `--fsdp-wrap`) as recipes wrap (`auto_wrap`), `root`
    none; else the outermost modules each glob matches (`blocks.*` gives the blocks, not their layers),
    innermost first over all globs, so that nested globs shard nested modules; a glob matching nothing is an
    error."""
    if globs == (WRAP_ROOT,):
        return []
    if globs in ((), (WRAP_AUTO,)):
        return sorted(auto_wrap(model)[1], key=lambda n: -n.count("."))
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for glob in globs:
        hits = [n for n in names if fnmatchcase(n, glob)]
        if not hits:
            raise MemtraceError(f"--fsdp-wrap {glob!r} matches no module (names look like {names[:3]})")
        outermost = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
        chosen += [n for n in outermost if n not in chosen]
    return sorted(chosen, key=lambda n: -n.count("."))


def auto_wrap(model: nn.Module) -> tuple[str, list[str]]:
    """`--fsdp-wrap auto`, as fine-tuning recipes shard: each module of a class named in the model's
    `_no_split_modules` (Hugging Face models; accelerate's FSDP2 wraps those), else each child of the
    `ModuleList` holding the most parameters (torchtitan shards every block), else none (the root alone).
    Returns how the modules were chosen and their names, in the model's order."""
    classes = _no_split_modules(model)
    if classes:
        hits = [n for n, m in model.named_modules() if n and type(m).__name__ in classes]
        if hits:
            kinds = sorted({type(model.get_submodule(n)).__name__ for n in hits})
            return f"each {', '.join(kinds)} (_no_split_modules)", hits
    lists = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.ModuleList) and len(m)]
    if lists:
        name, blocks = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
        if any(True for _ in blocks.parameters()):
            return f"each child of the ModuleList {name}", [
                f"{name}.{child}" for child, _ in blocks.named_children()
            ]
    return "the root alone (no _no_split_modules, no ModuleList)", []


def _no_split_modules(model: nn.Module) -> set[str]:
    """The class names in the outermost `_no_split_modules` (a PEFT model's is its base model's)."""
    for _, module in model.named_modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def wrap_note(model: nn.Module, parallel: Parallel) -> str:
    """The report's line naming what FSDP2 shards."""
    if parallel.wrap == (WRAP_ROOT,):
        return "FSDP2 wrap root: fully_shard(model) alone, one group for every parameter"
    if parallel.wrap in ((), (WRAP_AUTO,)):
        how, names = auto_wrap(model)
    else:
        how, names = f"the modules matching {', '.join(parallel.wrap)}", fsdp_targets(model, parallel.wrap)
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        names = sorted(names, key=order.__getitem__)
    shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
    which = f" ({len(names)} modules: {shown})" if names else ""
    auto = "auto" if parallel.wrap in ((), (WRAP_AUTO,)) else "--fsdp-wrap"
    return f"FSDP2 wrap {auto}: fully_shard {how}{which}, then the root"


def _fsdp(model: nn.Module, parallel: Parallel, mesh: Any) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=DTYPES[parallel.param_dtype] if parallel.param_dtype else None,
        reduce_dtype=DTYPES[parallel.reduce_dtype] if parallel.reduce_dtype else None,
    )
    offload = CPUOffloadPolicy(pin_memory=False) if parallel.cpu_offload else OffloadPolicy()
    options: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": parallel.reshard_after_forward,
        "mp_policy": policy,
        "offload_policy": offload,
    }
    for name in fsdp_targets(model, parallel.wrap):
        fully_shard(model.get_submodule(name), **options)
    fully_shard(model, **options)


class World:
    """The fake N-rank job a simulation runs in: `wrap` makes the model and batch fake CPU tensors and wraps
    the model under the recorder, so the engines' own allocations are events."""

    def __init__(self, parallel: Parallel, mesh: Any, stack: ExitStack) -> None:
        self.parallel = parallel
        self.mesh = mesh
        self.stack = stack
        self.notes: tuple[str, ...] = ()  # what the report says of the wrap

    def wrap(self, model: nn.Module, batch: Batch, rec: Recorder) -> tuple[nn.Module, Batch]:
        """FSDP2 shards the meta model, then `to_empty` makes the shards fake CPU tensors: FSDP2's flow for
        models too large for one rank, so the full model never exists on it. DDP wraps the full model."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        from .hooks import register_baseline

        if self.parallel.cpu_offload and rec.device.name == "cuda":
            raise MemtraceError(
                "--cpu-offload is simulated on --device cpu only: on the simulated CPU mesh the offloaded "
                "shards, gradients and optimizer state would count as GPU memory"
            )
        fsdp = self.parallel.engine == "fsdp"
        if fsdp:
            check_fsdp_storage(model, DTYPES.get(self.parallel.param_dtype or ""))
        self.notes = (wrap_note(model, self.parallel),) if fsdp else ()
        runner = wrap_model(model, self.parallel, self.mesh, simulated=True) if fsdp else model
        self.stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        if fsdp:
            model.to_empty(device="cpu")
        else:
            _to_fake(model)
        quant_states_as(model, _fake)  # bitsandbytes' absmax and code tables, replicated on every rank
        self.stack.enter_context(fake_weights_keep_quant_state())
        batch = Batch(
            tuple(_fake(x) for x in batch.args),
            {k: _fake(v) for k, v in batch.kwargs.items()},
            tuple(_fake(x) for x in batch.targets),
        )
        register_baseline(rec, model, batch.tensors(), {})
        if fsdp:
            self.stack.enter_context(_fsdp_communication(rec))
            self.stack.enter_context(_propagation_unrecorded())
        else:
            with RecordingMode(rec), rec.allocating_as(Category.COMMUNICATION):
                runner = wrap_model(model, self.parallel, self.mesh, simulated=True)
        self.stack.enter_context(_rng_state_kept())
        return runner, batch


@contextmanager
def simulated_world(parallel: Parallel | None) -> Iterator[World | None]:
    """The fake process group of `parallel.world` ranks as `parallel.rank`, torn down on exit; None: no-op."""
    if parallel is None:
        yield None
        return
    if not isinstance(parallel.world, int):
        raise MemtraceError(
            f"--{parallel.engine} {parallel.world}: a symbolic world size is for fit and sweep; give a number"
        )
    if not dist.is_available():
        raise MemtraceError("this PyTorch build has no torch.distributed: --ddp and --fsdp need it")
    if dist.is_initialized():
        raise MemtraceError("a process group is already initialised in this process: simulate in a fresh one")
    from torch.testing._internal.distributed.fake_pg import FakeStore

    hook = sys.excepthook  # init_process_group prefixes every later traceback with the rank, for good
    dist.init_process_group("fake", store=FakeStore(), rank=parallel.rank, world_size=parallel.world)
    try:
        mesh = None
        if parallel.engine == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (parallel.world,))
        with ExitStack() as stack:
            yield World(parallel, mesh, stack)
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook


@contextmanager
def _fsdp_communication(rec: Recorder) -> Iterator[None]:
    """FSDP2's unshard (all-gather in, copy out), its wait, and its post-backward (reduce-scatter) allocate
    communication buffers; patched on the param-group class while the simulation runs."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    names = ("unshard", "wait_for_unshard", "post_backward", "reshard")
    originals = {name: getattr(FSDPParamGroup, name) for name in names}

    def patched(original: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with rec.allocating_as(Category.COMMUNICATION):
                return original(*args, **kwargs)

        return run

    for name, fn in originals.items():
        setattr(FSDPParamGroup, name, patched(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(FSDPParamGroup, name, fn)


@contextmanager
def _propagation_unrecorded() -> Iterator[None]:
    """DTensor infers an op's output shape by running it on global-shape fake tensors the first time it
    meets the op (`ShardingPropagator._propagate_tensor_meta_non_cached`); no memory is allocated for them,
    so it runs outside the recorder (and outside the simulation's fake mode, in a fake mode of its own)."""
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    from torch.utils._python_dispatch import _disable_current_modes

    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def propagate(self: Any, op_schema: Any) -> Any:
        with _disable_current_modes():
            return original(self, op_schema)

    ShardingPropagator._propagate_tensor_meta_non_cached = propagate  # type: ignore[method-assign]
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original  # type: ignore[method-assign]


@contextmanager
def _rng_state_kept() -> Iterator[None]:
    """Checkpointing saves the CPU generator's state before forward and restores it around the
    recomputation; under FakeTensorMode the saved state is a fake tensor the generator cannot read. Restoring
    a fake state is skipped (a simulation draws no values); the state tensor's bytes are still recorded."""
    import torch.random

    original = torch.random.set_rng_state

    def set_rng_state(new_state: torch.Tensor) -> None:
        if not isinstance(new_state, FakeTensor):
            original(new_state)

    torch.random.set_rng_state = torch.set_rng_state = set_rng_state
    try:
        yield
    finally:
        torch.random.set_rng_state = torch.set_rng_state = original


def _fake(t: torch.Tensor) -> torch.Tensor:
    """A fake CPU tensor shaped like a meta one (called under FakeTensorMode)."""
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="cpu")


def _to_fake(model: nn.Module) -> None:
    """Parameters and buffers as fake CPU tensors, tied ones kept tied."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None:
                    continue
                if id(t) not in memo:
                    new = _fake(t)
                    if isinstance(t, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=t.requires_grad)
                    memo[id(t)] = new
                table[name] = memo[id(t)]
