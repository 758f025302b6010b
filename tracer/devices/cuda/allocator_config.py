"""The CUDA caching allocator's settings and size rules, ported from PyTorch 2.13's source (no torch import).

Sources, PyTorch 2.13 (`torch.version.git_version` cf30153c):
- `c10/core/AllocatorConfig.{h,cpp}`: the constants (`kMinBlockSize`, `kSmallSize`, `kSmallBuffer`,
  `kMinLargeAlloc`, `kRoundLarge`), `ConfigTokenizer`, `AcceleratorAllocatorConfig::parseArgs` and its
  `parseLargeSegmentSize` / `parseMaxSplitSize` / `parseMaxNonSplitRoundingSize` /
  `parseGarbageCollectionThreshold` / `parseRoundUpPower2Divisions` / `parseExpandableSegments`, and
  `roundup_power2_divisions(size)` (16 power-of-two intervals from 1 MiB to 64 GiB).
- `c10/cuda/CUDAAllocatorConfig.h`: the CUDA-only keys, and the environment variables read in order
  PYTORCH_CUDA_ALLOC_CONF, PYTORCH_HIP_ALLOC_CONF, PYTORCH_ALLOC_CONF (the first one set wins).
- `c10/cuda/CUDACachingAllocator.cpp`: `round_size`, `roundup_power2_next_division`,
  `get_allocation_size`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

K_MIN_BLOCK_SIZE = 512  # all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1048576  # largest "small" allocation is 1 MiB
K_SMALL_BUFFER = 2097152  # "small" allocations are packed in 2 MiB blocks
K_MIN_LARGE_ALLOC = 10485760  # allocations between 1 and 10 MiB may use the large segment size
K_ROUND_LARGE = 2097152  # round up large allocations to 2 MiB
K_LARGE_BUFFER = 20971520  # default `large_segment_size` (kLargeBuffer), 20 MiB
SIZE_MAX = 2**64 - 1  # std::numeric_limits<size_t>::max(): max_split_size when unset
_MB = 1024 * 1024
_INTERVALS = 16  # kRoundUpPowerOfTwoIntervals: 1 MiB .. 64 GiB
_INTERVAL_START = 20  # log2(1 MiB)

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")

# Keys the CUDA config hook accepts (CUDAAllocatorConfig::getKeys) that do not change block placement.
_CUDA_ONLY_KEYS = frozenset(
    {
        "backend",
        "release_lock_on_cudamalloc",
        "pinned_use_cuda_host_register",
        "release_lock_on_hipmalloc",
        "pinned_use_hip_host_register",
        "graph_capture_record_stream_reuse",
        "pinned_reserve_segment_size_mb",
        "pinned_num_register_threads",
        "per_process_memory_fraction",
        "pinned_free_catch_all",
        "throw_on_cudamalloc_oom",
        "pinned_use_background_threads",
        "pinned_max_round_threshold",
        "pinned_max_cached_size",
    }
)


_BOOL_KEYS = frozenset(
    {
        "release_lock_on_cudamalloc",
        "pinned_use_cuda_host_register",
        "release_lock_on_hipmalloc",
        "pinned_use_hip_host_register",
        "graph_capture_record_stream_reuse",
        "pinned_free_catch_all",
        "throw_on_cudamalloc_oom",
        "pinned_use_background_threads",
    }
)


class AllocatorConfigError(ValueError):
    """An option string PyTorch would refuse (its TORCH_CHECK_VALUE messages)."""


def _tokenize(text: str) -> list[str]:
    """`ConfigTokenizer`: split on , : [ ] (kept as tokens), drop whitespace."""
    tokens: list[str] = []
    buf = ""
    for ch in text:
        if ch in ",:[]":
            if buf:
                tokens.append(buf)
                buf = ""
            tokens.append(ch)
        elif not ch.isspace():
            buf += ch
    if buf:
        tokens.append(buf)
    return tokens


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _to_bool(token: str) -> bool:
    """`ConfigTokenizer::toBool`: exactly "True" or "False"."""
    if token not in ("True", "False"):
        raise AllocatorConfigError(f"Expected 'True' or 'False' but got '{token}'")
    return token == "True"


@dataclass(frozen=True)
class AllocatorConfig:
    """What the caching allocator reads from PYTORCH_ALLOC_CONF; defaults are PyTorch's."""

    max_split_size: int = SIZE_MAX
    max_non_split_rounding_size: int = K_LARGE_BUFFER
    large_segment_size: int = K_LARGE_BUFFER
    roundup_power2_divisions_list: tuple[int, ...] = (0,) * _INTERVALS
    garbage_collection_threshold: float = 0.0
    expandable_segments: bool = False
    per_process_memory_fraction: float = 1.0
    backend: str = "native"
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> AllocatorConfig:
        """Parse an option string as `AcceleratorAllocatorConfig::parseArgs` + the CUDA hook do."""
        return _Parser(_tokenize(text)).run(text)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllocatorConfig:
        """The first of PYTORCH_CUDA_ALLOC_CONF, PYTORCH_HIP_ALLOC_CONF, PYTORCH_ALLOC_CONF that is set."""
        env = os.environ if environ is None else environ
        for name in ENV_VARS:
            if name in env:
                return cls.parse(env[name])
        return cls()

    def updated(self, text: str) -> AllocatorConfig:
        """`_set_allocator_settings(text)`: max_split_size, roundup_power2_divisions and the GC threshold
        return to their defaults unless given; expandable_segments and large_segment_size_mb persist."""
        new = AllocatorConfig.parse(text)
        keys = set(_tokenize(text))
        keep: dict[str, object] = {}
        if "expandable_segments" not in keys:
            keep["expandable_segments"] = self.expandable_segments
        if "large_segment_size_mb" not in keys:
            keep["large_segment_size"] = self.large_segment_size
            if "max_non_split_rounding_mb" not in keys:
                keep["max_non_split_rounding_size"] = self.large_segment_size
        return replace(new, **keep)  # type: ignore[arg-type]

    def roundup_power2_divisions(self, size: int) -> int:
        """`AcceleratorAllocatorConfig::roundup_power2_divisions(size)`: the interval of floor(log2(size))."""
        log_size = size.bit_length() - 1
        index = max(0, log_size - _INTERVAL_START)
        return self.roundup_power2_divisions_list[min(index, _INTERVALS - 1)]

    def round_size(self, size: int) -> int:
        """`DeviceCachingAllocator::round_size`: 512 B multiples, or the next power-of-2 division."""
        if size < K_MIN_BLOCK_SIZE:
            return K_MIN_BLOCK_SIZE
        divisions = self.roundup_power2_divisions(size)
        if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
            return roundup_power2_next_division(size, divisions)
        return K_MIN_BLOCK_SIZE * ((size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)

    def allocation_size(self, size: int) -> int:
        """`get_allocation_size`: the segment cudaMalloc'd for a rounded request that found no block."""
        if size <= K_SMALL_SIZE:
            return K_SMALL_BUFFER
        if size < K_MIN_LARGE_ALLOC:
            return self.large_segment_size
        return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """`roundup_power2_next_division`: 1200 with 4 divisions lies in [1024, 2048) -> 1280."""
    if _is_pow2(size):
        return size
    if divisions < 2:
        raise AllocatorConfigError("Only 2 or more divisions are supported")
    power2_floor = 1 << (size.bit_length() - 1)
    division = power2_floor >> (divisions.bit_length() - 1)
    if division == 0:
        return power2_floor << 1
    floor = size & ~(division - 1)
    return size if floor == size else floor + division


class _Parser:
    """One pass of `parseArgs` over the tokens (large_segment_size_mb first, as the source does)."""

    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.values: dict[str, object] = {}
        self.divisions = [0] * _INTERVALS

    def _value(self, i: int) -> str:
        if i + 1 >= len(self.t) or self.t[i + 1] != ":" or i + 2 >= len(self.t):
            raise AllocatorConfigError(
                f"Error parsing allocator config: expected ':' and a value: {self.t[i]}"
            )
        return self.t[i + 2]

    def run(self, text: str) -> AllocatorConfig:
        large = K_LARGE_BUFFER
        for i, key in enumerate(self.t):
            if key == "large_segment_size_mb":
                mb = int(self._value(i))
                if mb <= K_MIN_LARGE_ALLOC // _MB:
                    raise AllocatorConfigError("option large_segment_size_mb must be > 10 MB")
                large = mb * _MB
        self.values["large_segment_size"] = large
        self.values["max_non_split_rounding_size"] = large
        i = 0
        while i < len(self.t):
            i = self._key(i, large)
            if i + 1 < len(self.t):
                if self.t[i + 1] != ",":
                    raise AllocatorConfigError("Error parsing allocator config: expected ','")
                i += 1
            i += 1
        self.values["roundup_power2_divisions_list"] = tuple(self.divisions)
        return AllocatorConfig(text=text, **self.values)  # type: ignore[arg-type]

    def _key(self, i: int, large: int) -> int:
        key = self.t[i]
        if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            mb = int(self._value(i))
            if mb < large // _MB:
                raise AllocatorConfigError(f"option {key} too small, must be >= {large // _MB}")
            name = "max_split_size" if key == "max_split_size_mb" else "max_non_split_rounding_size"
            self.values[name] = min(mb, SIZE_MAX // _MB) * _MB
        elif key == "garbage_collection_threshold":
            value = float(self._value(i))
            if not 0.0 < value < 1.0:
                raise AllocatorConfigError("garbage_collect_threshold is invalid, set it in (0.0, 1.0)")
            self.values["garbage_collection_threshold"] = value
        elif key == "roundup_power2_divisions":
            return self._divisions(i)
        elif key == "expandable_segments":
            self.values["expandable_segments"] = _to_bool(self._value(i))
        elif key == "per_process_memory_fraction":
            value = float(self._value(i))
            if not 0.0 <= value <= 1.0:
                raise AllocatorConfigError("per_process_memory_fraction is invalid, set it in [0.0, 1.0]")
            self.values["per_process_memory_fraction"] = value
        elif key in _BOOL_KEYS:
            _to_bool(self._value(i))
        elif key == "pinned_num_register_threads":
            threads = int(self._value(i)) if self._value(i).isdigit() else 0
            if not _is_pow2(threads) or threads > 128:
                raise AllocatorConfigError("pinned_num_register_threads: a power of 2, at most 128")
        elif key == "backend":
            self.values["backend"] = self._value(i)
        elif key == "large_segment_size_mb" or key in _CUDA_ONLY_KEYS:
            return self._skip(i)
        else:
            raise AllocatorConfigError(f"Unrecognized key '{key}' in Accelerator allocator config.")
        return i + 2

    def _skip(self, i: int) -> int:
        """`ConfigTokenizer::skipKey`: past the value, or past the closing ']' of a list."""
        self._value(i)
        j = i + 2
        if self.t[j] == "[":
            while j < len(self.t) and self.t[j] != "]":
                j += 1
        return j

    def _divisions(self, i: int) -> int:
        """`parseRoundUpPower2Divisions`: one value for all intervals, or `[64:8,256:4,>:1]` (MB bounds)."""
        first = self._value(i)
        if first != "[":
            value = int(first)
            if not _is_pow2(value):
                raise AllocatorConfigError("For roundups, the divisions has to be power of 2")
            self.divisions = [value] * _INTERVALS
            return i + 2
        j, last, first_value = i + 2, 0, True
        while j + 1 < len(self.t) and self.t[j + 1] != "]":
            bound, value = self.t[j + 1], int(self._value(j + 1))
            if value != 0 and not _is_pow2(value):
                raise AllocatorConfigError("For roundups, the divisions has to be power of 2 or 0")
            if bound == ">":
                self.divisions[last + 1 :] = [value] * (_INTERVALS - last - 1)
            else:
                last, first_value = self._bound(int(bound), value, first_value)
            j += 3
            if j + 1 < len(self.t) and self.t[j + 1] == ",":
                j += 1
        if j + 1 >= len(self.t):
            raise AllocatorConfigError("Expected closing bracket ']' in roundup_power2_divisions")
        return j + 1

    def _bound(self, bound: int, value: int, first_value: bool) -> tuple[int, bool]:
        if not _is_pow2(bound):
            raise AllocatorConfigError("For roundups, the intervals have to be power of 2")
        index = min(max(bound.bit_length() - 1, 0), _INTERVALS - 1)
        if first_value:
            self.divisions[:index] = [value] * index
        self.divisions[index] = value
        return index, False
