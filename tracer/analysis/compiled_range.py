"""A compiled step on a CUDA target: the range its peak is given as, and why (issue 23, item 4).

Inductor's CUDA plan (its Triton kernels: which ops each fuses, where a reduction splits into extra buffers)
is made only with Triton and the device, neither of which a simulation has; memtrace plans the compiled
step with inductor's CPU decisions instead. The step's CUDA figure is given as the range between that plan
and the eager step, both placed through the CUDA caching allocator for the same target. Pure: no torch."""

from __future__ import annotations

from dataclasses import replace

from ..core.records import GpuSpec, Result, StatedRange
from ..core.specs import Headroom
from ..devices.gpu import verdict

INDUCTOR_CUDA_PLAN = "inductor's CUDA plan"
_INDUCTOR_CAUSE = "needs the device: the figure lies between inductor's CPU plan (simulated) and eager's"
UNKNOWN = "inductor's CUDA kernels (Triton's fusion and split reductions, chosen with Triton and the device)"


def with_compiled_range(
    compiled: Result, eager: Result, gpu: GpuSpec | None, headroom: Headroom | None
) -> Result:
    """`compiled` with the range beside its figure: `cuda.compiled_range` in the JSON, a report note, and a
    stated range up to the eager step's reserved peak that the verdict weighs (`cuda.ranges`)."""
    if compiled.cuda is None or eager.cuda is None:
        return compiled
    ends = {
        "compiled_bytes": compiled.peak.bytes,
        "eager_bytes": eager.peak.bytes,
        "compiled_reserved_bytes": compiled.cuda.reserved_peak_bytes,
        "eager_reserved_bytes": eager.cuda.reserved_peak_bytes,
    }
    low, high = sorted((compiled.peak.bytes, eager.peak.bytes))
    ends |= {"low_bytes": low, "high_bytes": high}
    note = (
        f"torch.compile on cuda: {UNKNOWN} not simulated; the peak lies between {low:,} and {high:,} bytes "
        f"allocated (compiled with inductor's CPU plan {compiled.peak.bytes:,}, eager {eager.peak.bytes:,}; "
        f"reserved {compiled.cuda.reserved_peak_bytes:,} and {eager.cuda.reserved_peak_bytes:,})"
    )
    extra = max(0, eager.cuda.reserved_peak_bytes - compiled.cuda.reserved_peak_bytes)
    stated = StatedRange(INDUCTOR_CUDA_PLAN, _INDUCTOR_CAUSE, extra)
    cuda = replace(compiled.cuda, compiled_range=ends, ranges=(*compiled.cuda.ranges, stated))
    judged = verdict(gpu, headroom, compiled.peak_bytes, cuda)
    return replace(compiled, cuda=cuda, verdict=judged, notes=(*compiled.notes, note))
