"""Memory snapshots: the restricted unpickler, and the allocator replay against real GPU snapshots.

The real snapshots are not vendored (their repositories carry no licence): they are read from a local
cache, MEMTRACE_SNAPSHOT_CACHE or ~/.cache/memtrace/snapshots, filled as `benchmarks/fetch_snapshots.py`
describes; without it those tests skip. Synthetic snapshots made by the model itself run everywhere.
"""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from memtrace.tracer.devices.cuda.allocator import CachingAllocator
from memtrace.tracer.devices.cuda.snapshot import UnsafeSnapshotError, load_plain_pickle, load_snapshot
from memtrace.tracer.devices.cuda.snapshot_replay import replay_snapshot, starting_state

MB = 1024 * 1024


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_refuses_globals_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeSnapshotError):
        load_plain_pickle(pickle.dumps(_Payload(marker)))
    assert not marker.exists()
    with pytest.raises(UnsafeSnapshotError):
        load_plain_pickle(pickle.dumps(collections.OrderedDict(a=1)))
    assert load_plain_pickle(pickle.dumps({"a": [1, 2.5, "x", (3, None)], "b": b"y"})) == {
        "a": [1, 2.5, "x", (3, None)],
        "b": b"y",
    }


def test_rejects_what_is_not_a_snapshot() -> None:
    with pytest.raises(ValueError):
        load_snapshot(pickle.dumps([1, 2]))


class _Recorder:
    """Drives the model and writes the trace a GPU would record (alloc, frees, segment events)."""

    def __init__(self) -> None:
        self.alloc = CachingAllocator()
        self.trace: list[dict[str, Any]] = []
        self.recording = False
        self.ptrs: dict[int, int] = {}

    def _segments_since(self, n: int) -> None:
        if self.recording:
            for action, addr, size in self.alloc.segment_events[n:]:
                self.trace.append({"action": action, "addr": addr, "size": size, "stream": 0})

    def malloc(self, key: int, size: int) -> None:
        n = len(self.alloc.segment_events)
        self.ptrs[key] = self.alloc.malloc(size)
        self._segments_since(n)
        if self.recording:
            self.trace.append({"action": "alloc", "addr": self.ptrs[key], "size": size, "stream": 0})

    def free(self, key: int) -> None:
        ptr = self.ptrs.pop(key)
        size = self.alloc.active[ptr].requested_size
        self.alloc.free(ptr)
        if self.recording:
            for action in ("free_requested", "free_completed"):
                self.trace.append({"action": action, "addr": ptr, "size": size, "stream": 0})

    def empty_cache(self) -> None:
        n = len(self.alloc.segment_events)
        self.alloc.empty_cache()
        self._segments_since(n)

    def dump(self) -> bytes:
        segments = [dict(s, device=0) for s in self.alloc.segments()]
        return pickle.dumps({"segments": segments, "device_traces": [self.trace]})


def _workload(rec: _Recorder, rng_seed: int, start_key: int, n: int) -> None:
    import random

    rng = random.Random(rng_seed)
    sizes = [700, 4096, 300_000, MB, 3 * MB + 7, 12 * MB, 25 * MB + 512]
    for i in range(start_key, start_key + n):
        rec.malloc(i, rng.choice(sizes))
        live = list(rec.ptrs)
        if len(live) > 4 and rng.random() < 0.6:
            rec.free(rng.choice(live))


@pytest.mark.parametrize("mid_run", [False, True])
def test_replay_of_a_synthetic_snapshot(mid_run: bool) -> None:
    rec = _Recorder()
    if mid_run:
        _workload(rec, 1, 0, 200)  # allocations made before recording began
    rec.recording = True
    rec.empty_cache()
    _workload(rec, 2, 1000, 300)
    snap = load_snapshot(rec.dump())
    result = replay_snapshot(snap)
    assert result.match, result.first_difference
    assert result.reserved_replayed == result.reserved_expected == snap.reserved_bytes
    assert bool(starting_state(snap)) == mid_run


# ---- real GPU snapshots from the local cache ---------------------------------------------------------
def _cache_dir() -> Path:
    return Path(os.environ.get("MEMTRACE_SNAPSHOT_CACHE", Path.home() / ".cache" / "memtrace" / "snapshots"))


def _cached() -> list[Path]:
    root = _cache_dir()
    return sorted(p for p in root.rglob("*.pickle") if p.stat().st_size > 0) if root.is_dir() else []


# (segments, reserved bytes, peak allocated bytes) measured by this replay on the public snapshots.
EXPECTED = {
    "EfficientPyTorch/adam_foreach.pickle": (1, 2097152, 15872),
    "EfficientPyTorch/adam_forloop.pickle": (1, 2097152, 19968),
    "EfficientPyTorch/double_muls_full.pickle": (6, 5370806272, 5368710144),
    "EfficientPyTorch/double_muls_inference.pickle": (5, 4297064448, 4294967296),
    "EfficientPyTorch/pow_model.pickle": (10, 9665773568, 9663677952),
    "EfficientPyTorch/pow_model_checkpoint.pickle": (10, 9665773568, 9663677952),
    "EfficientPyTorch/triple_muls_fwd.pickle": (5, 4297064448, 4294976512),
    "EfficientPyTorch/vram_profile_example.pickle": (3, 3221225472, 3221225472),
    "EfficientPyTorch/0_VRAM_Original.pickle": (812, 37220253696, 36474194432),
    "EfficientPyTorch/1_VRAM_Gradient_Accumulation.pickle": (938, 25641877504, 24012237312),
    "cs336-a2-systems/memory_ctx128_forward.pickle": (516, 19667091456, 19498420224),
    "cs336-a2-systems/memory_ctx128_forward_.pickle": (516, 19667091456, 19498420224),
    "cs336-a2-systems/memory_ctx128_forward_mixed.pickle": (688, 24245174272, 24024505344),
    "cs336-a2-systems/memory_ctx128_fullstep.pickle": (1010, 61111009280, 55079000576),
    "cs336-a2-systems/memory_ctx128_fullstep_.pickle": (1010, 61111009280, 55079000576),
    "cs336-a2-systems/memory_ctx256_forward_.pickle": (700, 26545750016, 26388097024),
    "cs336-a2-systems/memory_ctx256_forward_mixed.pickle": (827, 28848422912, 28398369792),
    "cs336-a2-systems/memory_ctx256_fullstep_.pickle": (1021, 61025026048, 54961465856),
    "cs336-a2-systems/memory_ctx512_forward_.pickle": (658, 44715474944, 43810334720),
    "cs336-a2-systems/memory_ctx512_forward_mixed.pickle": (868, 40514879488, 39996685312),
    "cs336-a2-systems/memory_ctx512_fullstep_.pickle": (820, 62830673920, 55003351552),
}


@pytest.mark.skipif(
    not _cached(), reason="no GPU snapshots in the local cache (benchmarks/fetch_snapshots.py)"
)
@pytest.mark.parametrize("path", _cached(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_replay_matches_gpu_snapshot(path: Path) -> None:
    """Every block address, segment event and final segment of the GPU's trace, to the byte."""
    result = replay_snapshot(load_snapshot(path))
    assert result.match, result.first_difference
    assert result.segments_replayed == result.segments_expected
    assert result.reserved_replayed == result.reserved_expected
    expected = EXPECTED.get(f"{path.parent.name}/{path.name}")
    if expected is not None:
        assert (result.segments_expected, result.reserved_expected, result.allocated_peak_bytes) == expected
