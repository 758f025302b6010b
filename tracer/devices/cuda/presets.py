"""GPU presets: the memory the CUDA driver reports (total_memory), not the marketing figure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPreset:
    name: str
    memory_bytes: int
    compute_capability: str
    description: str


_GIB = 2**30
_MIB = 2**20

_PRESETS: tuple[GpuPreset, ...] = (
    GpuPreset("gtx1080ti", 11 * _GIB, "6.1", "GeForce GTX 1080 Ti, 11 GB"),
    GpuPreset("rtx2080ti", 11 * _GIB, "7.5", "GeForce RTX 2080 Ti, 11 GB"),
    GpuPreset("t4", 15360 * _MIB, "7.5", "Tesla T4, 16 GB"),
    GpuPreset("v100-16gb", 16 * _GIB, "7.0", "Tesla V100 16 GB"),
    GpuPreset("v100-32gb", 32 * _GIB, "7.0", "Tesla V100 32 GB"),
    GpuPreset("rtx3060", 12 * _GIB, "8.6", "GeForce RTX 3060, 12 GB"),
    GpuPreset("rtx3080", 10 * _GIB, "8.6", "GeForce RTX 3080, 10 GB"),
    GpuPreset("rtx3090", 24 * _GIB, "8.6", "GeForce RTX 3090, 24 GB"),
    GpuPreset("rtx4060", 8 * _GIB, "8.9", "GeForce RTX 4060, 8 GB"),
    GpuPreset("rtx4070", 12 * _GIB, "8.9", "GeForce RTX 4070, 12 GB"),
    GpuPreset("rtx4080", 16 * _GIB, "8.9", "GeForce RTX 4080, 16 GB"),
    GpuPreset("rtx4090", 24 * _GIB, "8.9", "GeForce RTX 4090, 24 GB"),
    GpuPreset("rtx5090", 32 * _GIB, "12.0", "GeForce RTX 5090, 32 GB"),
    GpuPreset("a10", 24 * _GIB, "8.6", "A10, 24 GB"),
    GpuPreset("l4", 24 * _GIB, "8.9", "L4, 24 GB"),
    GpuPreset("l40s", 48 * _GIB, "8.9", "L40S, 48 GB"),
    GpuPreset("a100-40gb", 40 * _GIB, "8.0", "A100 40 GB"),
    GpuPreset("a100-80gb", 80 * _GIB, "8.0", "A100 80 GB"),
    GpuPreset("h100-80gb", 81559 * _MIB, "9.0", "H100 80 GB (as reported by the driver)"),
    GpuPreset("h200", 143771 * _MIB, "9.0", "H200 141 GB (as reported by the driver)"),
)

PRESETS: dict[str, GpuPreset] = {p.name: p for p in _PRESETS}
_ALIASES = {"a100": "a100-40gb", "h100": "h100-80gb", "v100": "v100-16gb"}


def normalise_gpu_name(text: str) -> str:
    name = text.strip().lower().replace("_", "-").replace(" ", "")
    for prefix in ("nvidia-", "geforce-", "tesla-"):
        name = name.removeprefix(prefix)
    if name.startswith("rtx-"):
        name = "rtx" + name[4:]
    return _ALIASES.get(name, name)


# What the CUDA context and PyTorch's own kernels' modules take before the first tensor (not counted by
# torch.cuda.memory_allocated): typically 300-600 MiB with CUDA 12's lazy module loading. An estimate.
CUDA_CONTEXT_BYTES = 512 * _MIB
DEFAULT_HEADROOM_FRACTION = 0.05


def default_headroom(gpu_bytes: int, reserved: bool = False) -> int:
    """The CUDA context estimate, plus 5% of the GPU for allocator fragmentation unless the figure held
    against the budget is reserved memory (which already counts it)."""
    return CUDA_CONTEXT_BYTES + (0 if reserved else int(DEFAULT_HEADROOM_FRACTION * gpu_bytes))
