"""The one data model that flows through memtrace: events in, a Result out.

No torch import here: the analysis and the reporters work on these records alone,
and a saved JSON result renders again without re-tracing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from .plain import plain

SCHEMA_VERSION = 4  # 2: `cuda` figures, `step`/`loss`/`free_output`, named inputs, the verdict's basis;
# 3: the compacted per-event `timeline` and the command's `flags`;
# 4: the verdict's `status` (fits, borderline, does_not_fit) and the uncertainty it weighed
# (`uncertain_bytes`, `uncertain_reasons`)
READABLE_SCHEMAS = (1, 2, 3, SCHEMA_VERSION)


class Category(str, Enum):
    PARAMETER = "parameter"
    BUFFER = "buffer"
    INPUT = "input"
    ACTIVATION = "activation"
    GRADIENT = "gradient"
    OPTIMIZER_STATE = "optimizer_state"
    TEMPORARY = "temporary"
    OUTPUT = "output"
    WORKSPACE = "workspace"  # a library's persistent workspace (cuBLAS), allocated once and kept
    COMMUNICATION = "communication"  # DDP's buckets, FSDP2's all-gather and reduce-scatter buffers
    KV_CACHE = "kv_cache"  # the storages a KV cache object keeps (engine/generation.py's rule)


class Phase(str, Enum):
    SETUP = "setup"
    FORWARD = "forward"
    LOSS = "loss"  # after the model's forward returned, before the autograd engine starts
    BACKWARD = "backward"
    RECOMPUTE = "recompute"  # a checkpointed forward run again inside backward
    OPTIMIZER = "optimizer"
    PREFILL = "prefill"  # generation: the first forward with a KV cache under no_grad (the prompt's)
    DECODE = "decode"  # generation: the later forwards, one a new token


class Kind(str, Enum):
    ALLOC = "alloc"
    FREE = "free"


# Rows of the layer table that are not modules
OPTIMIZER_STEP = "(optimizer step)"
LOSS = "(loss)"  # the loss's tensors: the loss phase's, and a loss function's anywhere (hooks.py names them)


@dataclass(frozen=True, slots=True)
class Event:
    """One allocation or free of a storage, in program order (slotted: a long decode makes a million)."""

    seq: int
    kind: Kind
    storage: int
    nbytes: int
    phase: Phase
    iteration: int
    op: str
    module: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """What is known of one storage once the run is over (slotted, as Event)."""

    storage: int
    nbytes: int
    category: Category
    op: str
    module: str
    shape: tuple[int, ...]
    dtype: str
    phase: Phase
    iteration: int
    node: str = ""


def _positional(cls: type[Any]) -> Callable[..., Any]:
    """A constructor of the frozen, slotted record `cls` from all its fields by position, setting each slot
    through its own descriptor rather than the frozen `object.__setattr__` per field that `cls(...)` runs:
    about 2.5 times faster, for records made by the hundred thousand (a long decode's replayed events and
    its storages, a placed trace's copies). What it makes equals, and is of the same class as, `cls(...)`."""
    names = [f.name for f in fields(cls)]
    setters = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    body = "".join(f"    _set_{n}(made, {n})\n" for n in names)
    keywords = ", ".join(f"{k}={k}" for k in setters)
    source = f"def make({', '.join(names)}, *, {keywords}):\n    made = _new(_cls)\n{body}    return made\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, namespace)  # as dataclasses writes its own __init__
    made: Callable[..., Any] = namespace["make"]
    return made


make_event: Callable[..., Event] = _positional(Event)  # Event(seq, kind, ..., node), every field given
make_storage_info: Callable[..., StorageInfo] = _positional(StorageInfo)  # the same for StorageInfo


@dataclass(frozen=True)
class Trace:
    """Everything the recorder saw: events plus what each storage turned out to be."""

    events: tuple[Event, ...]
    storages: dict[int, StorageInfo]
    baseline: tuple[int, ...]
    iterations: int
    flops: int = 0  # the steady-state iteration's: forward, backward and recompute (2 per multiply-add)
    module_flops: dict[str, int] = field(default_factory=dict)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the user should know of how the step ran (lazy modules, TorchScript)
    workspace_estimate: tuple[int, int] | None = None  # the largest unplaced kernel workspace (cuDNN conv)
    assumptions: tuple[Assumption, ...] = ()  # the data-dependent values chosen (tracer/core/assume.py)
    decode_starts: tuple[
        tuple[int, int], ...
    ] = ()  # generation: (iteration, seq) where decode step i+1 starts
    managed_bytes: int = 0  # CUDA unified memory (bitsandbytes' paged optimizer state), outside the allocator
    stated_ranges: tuple[StatedRange, ...] = ()  # what the simulated figure may still grow by (cuda)
    host_peak_bytes: int = 0  # pinned host memory at its peak (an offloaded KV cache's copies), outside it


@dataclass(frozen=True)
class StatedRange:
    """A part of the figure the simulation states as a range, not a number: `what` (named in the verdict's
    `uncertain_reasons`), its `cause`, and `extra_bytes`, how far the range's upper end lies above what the
    simulation placed (its lower end). A verdict is "fits" only when the spare covers every such range."""

    what: str
    cause: str
    extra_bytes: int


@dataclass(frozen=True)
class Assumption:
    """A value the simulation chose for a data-dependent op (tracer/core/assume.py): the op, the module it ran
    in, the value chosen, and where the choice came from (`default` or `--assume`)."""

    op: str
    module: str
    value: str
    source: str


LOGGED = "placeholder"  # an Assumption's source for a value the step logs (`loss.item()`): no choice made


@dataclass(frozen=True)
class TensorRow:
    nbytes: int
    category: Category
    shape: tuple[int, ...]
    dtype: str
    op: str
    module: str


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    parameters: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # saved for backward in the steady-state forward (and recompute)
    peak_bytes: int  # live at the peak
    flops: int
    input_shape: tuple[int, ...] = ()
    kv_cache: int = 0  # the bytes of this layer's KV cache live at the peak (engine/generation.py's rule)


@dataclass(frozen=True)
class LayerShare:
    """One module's bytes live at the peak: its parameters, their gradients and state, its activations."""

    module: str
    type: str
    bytes: int
    by_category: dict[Category, int]


@dataclass(frozen=True)
class Peak:
    bytes: int
    seq: int
    phase: Phase
    iteration: int
    op: str
    module: str
    by_category: dict[Category, int]
    top_tensors: tuple[TensorRow, ...]
    token_index: int | None = None  # generation: the decode step (1 = the first new token after prefill)


@dataclass(frozen=True)
class PhasePeak:
    phase: Phase
    bytes: int
    op: str
    module: str


@dataclass(frozen=True)
class InputSpec:
    """One input of the step: positional, or a keyword argument of the model when it has a name."""

    shape: tuple[int | str, ...]
    dtype: str = "float32"
    name: str | None = None

    def text(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        text = dims if self.dtype == "float32" else f"{dims}:{self.dtype}"
        return text if self.name is None else f"{self.name}={text}"

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        return cls(tuple(data["shape"]), data["dtype"], data.get("name"))


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bytes: int


FITS, BORDERLINE, DOES_NOT_FIT = "fits", "borderline", "does_not_fit"  # a Verdict's status
CUDNN_WORKSPACE = "cuDNN's convolution workspace"  # an uncertainty a verdict weighs: not simulated, bounded


@dataclass(frozen=True)
class Verdict:
    """Peak against the GPU: budget = GPU memory - headroom kept free; spare = budget - peak (< 0: short).
    `basis` is the figure held against it: "reserved" (what runs out on a GPU) or "allocated".

    `uncertain_bytes` is what the figure may still grow by beyond the simulation, the sum of the stated bounds
    of what it does not place (`uncertain_reasons` names them). `status`: "fits" when the spare covers that
    too, "borderline" when only the simulated figure fits, "does_not_fit" when even it does not; `fits` is
    true for "fits" alone. Without a status (schemas 1-3) it follows `fits`."""

    gpu: GpuSpec
    fits: bool
    budget_bytes: int
    spare_bytes: int
    basis: str = "allocated"
    status: str = ""
    uncertain_bytes: int = 0
    uncertain_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", FITS if self.fits else DOES_NOT_FIT)

    @property
    def worst_short_bytes(self) -> int:
        """How far over the budget the figure goes when every uncertainty takes its bound (<= 0: it fits)."""
        return self.uncertain_bytes - self.spare_bytes


def judge(
    gpu: GpuSpec, budget_bytes: int, used: int, basis: str, uncertain: Sequence[tuple[str, int]] = ()
) -> Verdict:
    """The verdict on `used` bytes against the budget, each (reason, bound) of `uncertain` weighed."""
    spare = budget_bytes - used
    bound = sum(b for _, b in uncertain)
    status = DOES_NOT_FIT if spare < 0 else FITS if spare >= bound else BORDERLINE
    reasons = tuple(r for r, b in uncertain if b > 0)
    return Verdict(gpu, status == FITS, budget_bytes, spare, basis, status, bound, reasons)


def stated_uncertainty(cuda: CudaFigures | None) -> tuple[tuple[str, int], ...]:
    """Each stated bound on what the simulated figure leaves out or places at its range's lower end:
    cuDNN's convolution workspace (chosen by cuDNN's heuristics at run time, never placed), up to its
    estimate's high end, then every other stated range (`CudaFigures.ranges`) by its upper end."""
    if cuda is None:
        return ()
    estimate = cuda.cudnn_workspace_estimate
    conv = ((CUDNN_WORKSPACE, estimate["high_bytes"]),) if estimate and estimate["high_bytes"] > 0 else ()
    return conv + tuple((r.what, r.extra_bytes) for r in cuda.ranges if r.extra_bytes > 0)


@dataclass(frozen=True)
class CudaFigures:
    """The caching allocator's figures for the simulated steps (the allocator model replayed).

    allocated: block sizes after the split decision, `torch.cuda.max_memory_allocated()`, the steady-state
    step's (equals `peak_bytes`); requested: the sizes asked for (`requested_bytes.all.peak`), over all the
    simulated steps, as `torch.cuda` counts it from a reset;
    reserved: segments (`torch.cuda.max_memory_reserved()`) after both steps; context: what the CUDA context
    adds on nvidia-smi, an estimate; segments: at the reserved peak.
    """

    allocated_peak_bytes: int
    requested_peak_bytes: int
    reserved_peak_bytes: int
    context_bytes_estimate: int
    fragmentation_bytes: int  # reserved but not allocated at the reserved peak
    segments: tuple[dict[str, Any], ...] = ()
    # one cuDNN convolution's workspace, chosen by cuDNN's heuristics and not in the peak: an estimate
    # {low_bytes, high_bytes} of the largest call's (tracer/devices/cuda/conv.py), None without convolutions
    cudnn_workspace_estimate: dict[str, int] | None = None
    # the GPU architecture the kernels (attention, cuBLAS workspace) were chosen for, and whether it was
    # assumed (no --gpu preset: an A100) rather than the preset's
    compute_capability: str = "8.0"
    compute_capability_assumed: bool = True
    # CUDA unified memory (bitsandbytes' paged optimizer state, `cudaMallocManaged`): neither allocated nor
    # reserved; nvidia-smi shows its pages while they are on the GPU (the optimizer step prefetches them;
    # the driver pages them out to the host under memory pressure)
    managed_bytes: int = 0
    # every other range the figures rest on (cuDNN's RNN spaces, inductor's CUDA plan): in the JSON only
    # when there is one, so a result without ranges saves as before
    ranges: tuple[StatedRange, ...] = ()
    # pinned host memory at its peak: an offloaded KV cache's layers copied to the host (`.to("cpu",
    # non_blocking=True)` of a CUDA tensor pins); neither allocated nor reserved
    host_bytes: int = 0
    # a compiled step (inductor): {low_bytes, high_bytes} of its allocated peak, between the compiled step as
    # inductor plans it for the CPU (compiled_bytes) and the eager step (eager_bytes), and the reserved peaks
    # of both; inductor's CUDA kernels need Triton and the device (analysis/compiled_range.py)
    compiled_range: dict[str, int] | None = None

    @property
    def nvidia_smi_estimate_bytes(self) -> int:
        return self.reserved_peak_bytes + self.context_bytes_estimate + self.managed_bytes


@dataclass(frozen=True)
class PhaseBand:
    """A run of consecutive events of one phase: timeline indexes [start, end)."""

    phase: Phase
    start: int
    end: int


@dataclass(frozen=True)
class StepTimeline:
    """Bytes live per category after the steady-state step's events, compacted (tracer/analysis/timeline.py).

    `index[i]` is the event (alloc or free, in program order, 0 = the step's first) that point i follows;
    `by_category[c][i]` the bytes of category c live after it (categories never live are left out);
    `reserved[i]` the caching allocator's reserved bytes then (cuda; empty on cpu). `events` is the step's
    event count, `peak_index` the event of the reported peak, `bands` the phases as event runs.
    """

    events: int
    index: tuple[int, ...]
    by_category: dict[Category, tuple[int, ...]]
    reserved: tuple[int, ...] = ()
    bands: tuple[PhaseBand, ...] = ()
    peak_index: int = -1

    def totals(self) -> list[int]:
        """Bytes live after each kept point, all categories together."""
        series = list(self.by_category.values())
        return [sum(col) for col in zip(*series, strict=True)] if series else [0] * len(self.index)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "index": list(self.index),
            "by_category": {c.value: list(v) for c, v in self.by_category.items()},
            "reserved": list(self.reserved),
            "bands": [[b.phase.value, b.start, b.end] for b in self.bands],
            "peak_index": self.peak_index,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StepTimeline:
        return cls(
            events=d["events"],
            index=tuple(d["index"]),
            by_category={Category(k): tuple(v) for k, v in d["by_category"].items()},
            reserved=tuple(d.get("reserved", ())),
            bands=tuple(PhaseBand(Phase(p), s, e) for p, s, e in d.get("bands", ())),
            peak_index=d.get("peak_index", -1),
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    parameters: int
    trainable_parameters: int
    parameter_bytes: int
    buffer_bytes: int
    build_path: str


@dataclass(frozen=True)
class Result:
    """A simulated step, ready to render or save."""

    model: ModelInfo
    device: str
    mode: str
    optimizer: str
    inputs: tuple[InputSpec, ...]
    peak: Peak
    phases: tuple[PhasePeak, ...]
    totals: dict[Category, int]
    first_iteration_peak: int
    top_layers: tuple[LayerShare, ...]
    verdict: Verdict | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    recipe: str = "fp32"
    accumulate: int = 1
    flops: int = 0
    modules: tuple[LayerRow, ...] = ()  # each module's own figures; roll up with layers.at_depth
    activation_peak: int = 0  # the most saved-activation bytes live at once (one micro-batch's graph)
    step: str = "default"  # "default" (memtrace's loop), or the user's FILE.py:FUNC
    loss: str = "auto"  # the loss of the default step ("" with a user step or in inference)
    free_output: bool = False  # the default step drops the output before backward
    cuda: CudaFigures | None = None  # on --device cuda: allocated, requested, reserved
    timeline: StepTimeline | None = None  # the steady-state step, compacted for the pictures
    flags: dict[str, Any] = field(default_factory=dict)  # the command's options, as the CLI parsed them
    parallel: str = ""  # the data-parallel job one rank of which was simulated (`fsdp 8 (rank 0; ...)`)
    assumptions: tuple[Assumption, ...] = ()  # the data-dependent values chosen, each once

    @property
    def all_steps_peak_bytes(self) -> int:
        """The allocated peak over every simulated step: what a real run measures from a reset."""
        return max(self.peak.bytes, self.first_iteration_peak)

    @property
    def fit_bytes(self) -> int:
        """What must fit the GPU's budget: reserved memory when the allocator is modelled, else the peak."""
        return self.cuda.reserved_peak_bytes if self.cuda is not None else self.peak.bytes

    @property
    def peak_bytes(self) -> int:
        return self.peak.bytes

    @property
    def effective_batch(self) -> int | None:
        """Samples per optimizer step: the first input's leading dimension times the micro-batches."""
        if not self.inputs or not self.inputs[0].shape or not isinstance(self.inputs[0].shape[0], int):
            return None
        return self.inputs[0].shape[0] * self.accumulate

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "peak_bytes": self.peak.bytes,
            "by_category": plain(self.peak.by_category),
            "phases": {p.phase.value: plain(p) for p in self.phases},
            "device": self.device,
            "mode": self.mode,
            "optimizer": self.optimizer,
            "inputs": plain([i.to_json() for i in self.inputs]),
            "model": plain(self.model),
            "peak": plain(self.peak),
            "totals": plain(self.totals),
            "first_iteration_peak_bytes": self.first_iteration_peak,
            "top_layers": plain(self.top_layers),
            "verdict": plain(self.verdict) if self.verdict else None,
            "notes": list(self.notes),
            "recipe": self.recipe,
            "accumulate": self.accumulate,
            "effective_batch": self.effective_batch,
            "flops": self.flops,
            "modules": plain(self.modules),
            "activation_peak_bytes": self.activation_peak,
            "step": self.step,
            "loss": self.loss,
            "free_output": self.free_output,
            "cuda": _cuda_json(self.cuda) if self.cuda else None,
            "flags": plain(self.flags),
            "parallel": self.parallel,
            "assumptions": plain(self.assumptions),
        }
        data["timeline"] = self.timeline.to_json() if self.timeline else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"unsupported memtrace result schema {data.get('schema')!r}")
        verdict = data.get("verdict")
        return cls(
            model=ModelInfo(**data["model"]),
            device=data["device"],
            mode=data["mode"],
            optimizer=data["optimizer"],
            inputs=tuple(InputSpec.from_json(i) for i in data["inputs"]),
            peak=_peak_from(data["peak"]),
            phases=tuple(_phase_from(p) for p in data["phases"].values()),
            totals={Category(k): v for k, v in data["totals"].items()},
            first_iteration_peak=data["first_iteration_peak_bytes"],
            top_layers=tuple(_layer_from(t) for t in data["top_layers"]),
            verdict=_verdict_from(verdict) if verdict else None,
            notes=tuple(data["notes"]),
            recipe=data.get("recipe", "fp32"),
            accumulate=data.get("accumulate", 1),
            flops=data.get("flops", 0),
            modules=tuple(_row_from(m) for m in data.get("modules", ())),
            activation_peak=data.get("activation_peak_bytes", 0),
            step=data.get("step", "default"),
            loss=data.get("loss", "auto"),
            free_output=data.get("free_output", False),
            cuda=_cuda_from(data.get("cuda")),
            timeline=StepTimeline.from_json(data["timeline"]) if data.get("timeline") else None,
            flags=dict(data.get("flags") or {}),
            parallel=data.get("parallel", ""),
            assumptions=tuple(Assumption(**a) for a in data.get("assumptions", ())),
        )


def _verdict_from(d: dict[str, Any]) -> Verdict:
    """Schemas 1-3 have no status: it follows `fits` (what they said), with no uncertainty weighed."""
    return Verdict(
        GpuSpec(**d["gpu"]),
        d["fits"],
        d["budget_bytes"],
        d["spare_bytes"],
        d.get("basis", "allocated"),
        d.get("status", ""),
        d.get("uncertain_bytes", 0),
        tuple(d.get("uncertain_reasons", ())),
    )


def _cuda_from(d: dict[str, Any] | None) -> CudaFigures | None:
    if d is None:
        return None
    ranges = tuple(StatedRange(**r) for r in d.get("ranges", ()))
    return CudaFigures(**{**d, "segments": tuple(d.get("segments", ())), "ranges": ranges})


def _tensor_from(d: dict[str, Any]) -> TensorRow:
    return TensorRow(
        d["nbytes"], Category(d["category"]), tuple(d["shape"]), d["dtype"], d["op"], d["module"]
    )


def _row_from(d: dict[str, Any]) -> LayerRow:
    return LayerRow(**{**d, "output_shape": tuple(d["output_shape"]), "input_shape": tuple(d["input_shape"])})


def _layer_from(d: dict[str, Any]) -> LayerShare:
    return LayerShare(
        d["module"], d["type"], d["bytes"], {Category(k): v for k, v in d["by_category"].items()}
    )


def _phase_from(d: dict[str, Any]) -> PhasePeak:
    return PhasePeak(Phase(d["phase"]), d["bytes"], d["op"], d["module"])


def _peak_from(d: dict[str, Any]) -> Peak:
    return Peak(
        bytes=d["bytes"],
        seq=d["seq"],
        phase=Phase(d["phase"]),
        iteration=d["iteration"],
        op=d["op"],
        module=d["module"],
        by_category={Category(k): v for k, v in d["by_category"].items()},
        top_tensors=tuple(_tensor_from(t) for t in d["top_tensors"]),
        token_index=d.get("token_index"),
    )


def _cuda_json(cuda: CudaFigures) -> dict[str, Any]:
    """`plain(cuda)`, without `ranges` where there is none (so a result without ranges saves as before)."""
    data: dict[str, Any] = plain(cuda)
    if not cuda.ranges:
        del data["ranges"]
    return data
