"""GPU presets: the memory the CUDA driver reports (total_memory), not the marketing figure."""

from __future__ import annotations

import re
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
    GpuPreset("gtx1080ti", 11 * _GIB, "6.1", "GTX 1080 Ti, 11 GB"),
    GpuPreset("rtx2080ti", 11 * _GIB, "7.5", "RTX 2080 Ti, 11 GB"),
    GpuPreset("t4", 15360 * _MIB, "7.5", "T4, 16 GB"),
    GpuPreset("v100-16gb", 16 * _GIB, "7.0", "V100 16 GB"),
    GpuPreset("v100-32gb", 32 * _GIB, "7.0", "V100 32 GB"),
    GpuPreset("rtx3060", 12 * _GIB, "8.6", "RTX 3060, 12 GB"),
    GpuPreset("rtx3080", 10 * _GIB, "8.6", "RTX 3080, 10 GB"),
    GpuPreset("rtx3090", 24 * _GIB, "8.6", "RTX 3090, 24 GB"),
    GpuPreset("rtx4060", 8 * _GIB, "8.9", "RTX 4060, 8 GB"),
    GpuPreset("rtx4070", 12 * _GIB, "8.9", "RTX 4070, 12 GB"),
    GpuPreset("rtx4080", 16 * _GIB, "8.9", "RTX 4080, 16 GB"),
    GpuPreset("rtx4090", 24 * _GIB, "8.9", "RTX 4090, 24 GB"),
    GpuPreset("rtx5090", 32 * _GIB, "12.0", "RTX 5090, 32 GB"),
    GpuPreset("a10", 24 * _GIB, "8.6", "A10, 24 GB"),
    GpuPreset("l4", 24 * _GIB, "8.9", "L4, 24 GB"),
    GpuPreset("l40s", 48 * _GIB, "8.9", "L40S, 48 GB"),
    GpuPreset("a100-40gb", 40 * _GIB, "8.0", "A100 40 GB"),
    GpuPreset("a100-80gb", 80 * _GIB, "8.0", "A100 80 GB"),
    GpuPreset("h100-80gb", 81559 * _MIB, "9.0", "H100 80 GB"),
    GpuPreset("h200", 143771 * _MIB, "9.0", "H200 141 GB"),
)

PRESETS: dict[str, GpuPreset] = {p.name: p for p in _PRESETS}

# A bare number names a GPU only when it is a model number this long (4090, 3090); shorter ones (24, 10)
# are sizes without a unit, never the a10 or the l4.
MODEL_NUMBER_DIGITS = 3
_MODEL_NAME = re.compile(r"[a-z]+([0-9]+)")


def normalise_gpu_name(text: str) -> str:
    name = "-".join(text.lower().replace("_", " ").split())
    for prefix in ("nvidia-", "geforce-", "tesla-"):
        name = name.removeprefix(prefix)
    if name.startswith("rtx-") or name.startswith("gtx-"):
        name = name[:3] + name[4:]
    return name


def presets_named(text: str) -> list[GpuPreset]:
    """The presets a name means: the preset itself, else those of its family (`h100` is h100-80gb;
    `a100` is both a100-40gb and a100-80gb: ambiguous, for the caller to refuse)."""
    name = normalise_gpu_name(text)
    if name in PRESETS:
        return [PRESETS[name]]
    return [p for p in _PRESETS if p.name.split("-")[0] == name]


def presets_numbered(number: str) -> list[GpuPreset]:
    """The presets whose name ends with this model number after its letters (`4090`: rtx4090)."""
    if len(number) < MODEL_NUMBER_DIGITS or not number.isdigit():
        return []
    return [p for p in _PRESETS if model_number(p) == number]


def model_number(preset: GpuPreset) -> str | None:
    """The model number a bare `--gpu` number resolves by (rtx4090: 4090), None when there is none."""
    match = _MODEL_NAME.fullmatch(preset.name)
    if match is None or len(match.group(1)) < MODEL_NUMBER_DIGITS:
        return None
    return match.group(1)


def short_names(preset: GpuPreset) -> list[str]:
    """The other names --gpu takes for this preset: its family when it is the family's only preset
    (h100), its model number (4090)."""
    names = []
    family = preset.name.split("-")[0]
    if family != preset.name and presets_named(family) == [preset]:
        names.append(family)
    number = model_number(preset)
    if number is not None and presets_numbered(number) == [preset]:
        names.append(number)
    return names


# What the CUDA context and PyTorch's own kernels' modules take before the first tensor (not counted by
# torch.cuda.memory_allocated): typically 300-600 MiB with CUDA 12's lazy module loading. An estimate.
CUDA_CONTEXT_BYTES = 512 * _MIB
DEFAULT_HEADROOM_FRACTION = 0.05


def default_headroom(gpu_bytes: int, reserved: bool = False) -> int:
    """The CUDA context estimate, plus 5% of the GPU for allocator fragmentation unless the figure held
    against the budget is reserved memory (which already counts it)."""
    return CUDA_CONTEXT_BYTES + (0 if reserved else int(DEFAULT_HEADROOM_FRACTION * gpu_bytes))
