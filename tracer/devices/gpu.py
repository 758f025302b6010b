"""The GPU side of a simulation: the target GPU for kernel choices (SDPA), the caching allocator's figures,
and the verdict against a GPU's memory. Torch-light: only the attention target touches torch."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..core.errors import MemtraceError
from ..core.presets import CUDA_CONTEXT_BYTES
from ..core.records import CudaFigures, GpuSpec, StatedRange, Verdict, judge, stated_uncertainty
from ..core.specs import Headroom, budget
from .cuda import attention as cuda_attention
from .cuda import sdp_choice
from .cuda.allocator import AllocatorConfig, AllocatorConfigError, ReplayStats
from .cuda.allocator_config import ENV_VARS

if TYPE_CHECKING:
    from ..simulate import Config


@contextlib.contextmanager
def gpu_target(config: Config) -> Iterator[cuda_attention.Target | None]:
    """On cuda, the GPU the kernels are chosen for (SDPA's backend), else nothing."""
    if config.device != "cuda":
        yield None
        return
    arch = config.arch or sdp_choice.DEFAULT_COMPUTE_CAPABILITY
    cuda = config.cuda_version or sdp_choice.DEFAULT_CUDA_VERSION
    with cuda_attention.target(arch, config.cudnn_version, config.sdpa_backend, cuda_version=cuda) as target:
        yield target


def gpu_notes(config: Config, target: cuda_attention.Target | None) -> tuple[str, ...]:
    """Which SDPA kernels ran, for which GPU (a default one is said to be assumed), then what other rules
    said of the step on the target (`Target.note`: what they simulated instead)."""
    if target is None:
        return ()
    return (*_sdpa_note(config, target), *target.notes)


def _sdpa_note(config: Config, target: cuda_attention.Target) -> tuple[str, ...]:
    if not target.choices:
        return ()
    counts = ", ".join(f"{backend} x{n}" for backend, n in sorted(target.summary().items()))
    gpu = target.gpu
    where = f"sm{gpu.compute_capability.replace('.', '')}"
    if config.arch is None:
        where += " (no --gpu preset: an A100 is assumed)"
    version = config.cudnn_version or sdp_choice.DEFAULT_CUDNN_VERSION
    cudnn = f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    default = "" if config.cudnn_version else ", the default"
    cuda = f", CUDA {config.cuda_version}" if config.cuda_version else ""
    text = f"SDPA on {where}, cuDNN {cudnn}{default}{cuda}, --sdpa-backend {config.sdpa_backend}: {counts}"
    return (text,)


def stated_ranges(target: cuda_attention.Target | None) -> tuple[StatedRange, ...]:
    """The ranges the run's rules stated, one per `what` (its calls' extra bytes summed), first seen first."""
    if target is None:
        return ()
    summed: dict[str, tuple[str, int]] = {}
    for what, cause, extra in target.ranges.values():
        summed[what] = (cause, summed.get(what, (cause, 0))[1] + extra)
    return tuple(StatedRange(what, cause, extra) for what, (cause, extra) in summed.items())


def allocator_config(text: str | None) -> AllocatorConfig:
    """`--alloc-conf`, else PyTorch's environment variables, parsed as PyTorch parses them; each setting
    text once per process (a Config made again by `replace` finds it parsed)."""
    given = text if text is not None else next((os.environ[n] for n in ENV_VARS if n in os.environ), None)
    try:
        return _parsed(given)
    except AllocatorConfigError as exc:
        where = f"--alloc-conf {text!r}" if text is not None else "PYTORCH_CUDA_ALLOC_CONF (or _ALLOC_CONF)"
        raise MemtraceError(f"allocator settings in {where}: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _parsed(text: str | None) -> AllocatorConfig:
    return AllocatorConfig.parse(text) if text is not None else AllocatorConfig()


def cuda_figures(allocated: int, requested: int, stats: ReplayStats, arch: str | None) -> CudaFigures:
    segments = tuple(stats.to_json()["segments"])
    return CudaFigures(
        allocated,
        requested,
        stats.reserved_peak_bytes,
        CUDA_CONTEXT_BYTES,
        stats.fragmentation_bytes,
        segments,
        compute_capability=arch or sdp_choice.DEFAULT_COMPUTE_CAPABILITY,
        compute_capability_assumed=arch is None,
    )


def verdict(
    gpu: GpuSpec | None, headroom: Headroom | None, peak: int, cuda: CudaFigures | None
) -> Verdict | None:
    """Reserved memory against the GPU when the allocator is modelled (the headroom then covers the CUDA
    context only), else the peak (with the default headroom's fragmentation allowance); what the simulation
    leaves out but bounds (cuDNN's convolution workspace) makes a fit that it could break borderline."""
    if gpu is None:
        return None
    used, basis = (cuda.reserved_peak_bytes, "reserved") if cuda is not None else (peak, "allocated")
    room = budget(gpu, headroom, reserved=cuda is not None)
    return judge(gpu, room, used, basis, stated_uncertainty(cuda))
