"""The CUDA caching allocator model (tracer/devices/cuda/allocator*.py) against PyTorch 2.13's rules.

Tests named `test_torch_*` port the expectations of PyTorch's own `test/test_cuda.py`
(`TestCuda.test_allocator_settings`, `test_memory_snapshot`, `test_max_split_expandable`,
`test_garbage_collect_expandable`, `test_raises_oom`, `test_cachingAllocator_raw_alloc`,
`test_allocator_memory_fraction_setting`, `test_allocator_fuzz`, `_test_memory_stats_generator`) to the
model: pure Python, no GPU. The rest pin the source's constants and branches (`should_split`,
`get_allocation_size`, `get_free_block`, `release_cached_blocks`, expandable pages).
"""

from __future__ import annotations

import random

import pytest

from memtrace.tracer.devices.cuda.allocator import (
    AllocatorConfig,
    AllocatorConfigError,
    AllocRequest,
    CachingAllocator,
    OutOfMemoryError,
    replay,
    replay_events,
)
from memtrace.tracer.devices.cuda.allocator_blocks import DeviceStats
from memtrace.tracer.devices.cuda.allocator_config import roundup_power2_next_division

MB = 1024 * 1024


def _power2_div(size: int, div_factor: int) -> int:
    """test_cuda.py's reference for roundup_power2_divisions."""
    pow2 = 1
    while pow2 < size:
        pow2 *= 2
    if pow2 == size:
        return pow2
    step = pow2 // 2 // div_factor
    ret = pow2 // 2
    while ret < size:
        ret += step
    return ret


def _stat(a: CachingAllocator, key: str) -> int:
    return int(a.memory_stats()[key])


# ---- PyTorch test_cuda.py, ported --------------------------------------------------------------------
def test_torch_allocator_settings_rounding() -> None:
    """TestCuda.test_allocator_settings: block sizes under roundup_power2_divisions (single and list)."""
    a = CachingAllocator()
    key, key_req = "active_bytes.all.allocated", "requested_bytes.all.allocated"
    nbytes, nbytes_big = 4 * 21 * MB, 4 * 100 * MB
    start = _stat(a, key)
    a.set_allocator_settings("")
    a.malloc(nbytes)
    reg, start_req = _stat(a, key), _stat(a, key_req)
    a.set_allocator_settings("roundup_power2_divisions:4")
    a.malloc(nbytes)
    assert reg - start == nbytes
    assert _stat(a, key) - reg == _power2_div(nbytes, 4) == 96 * MB
    assert _stat(a, key_req) - start_req == nbytes
    a.set_allocator_settings("garbage_collection_threshold:0.5,max_split_size_mb:40")
    a.empty_cache()
    start = _stat(a, key)
    a.malloc(nbytes)  # the divisions were reset
    assert _stat(a, key) - start == nbytes
    a.set_allocator_settings(
        "garbage_collection_threshold:0.5,roundup_power2_divisions:[64:8,128:2,256:2,512:2,1024:1,>:1]"
    )
    start = _stat(a, key)
    a.malloc(nbytes)
    assert _stat(a, key) - start == _power2_div(nbytes, 8) == 88 * MB
    start = _stat(a, key)
    a.malloc(nbytes_big)
    assert _stat(a, key) - start == _power2_div(nbytes_big, 2) == 512 * MB


@pytest.mark.parametrize(
    "text",
    [
        "foo:1,bar:2",
        "garbage_collection_threshold:1.2",
        "max_split_size_mb:2",
        "release_lock_on_cudamalloc:none",
        "pinned_use_cuda_host_register:none",
        "pinned_num_register_threads:none",
        "pinned_num_register_threads:1024",
        "per_process_memory_fraction:-0.1",
        "per_process_memory_fraction:1.1",
    ],
)
def test_torch_allocator_settings_refused(text: str) -> None:
    """TestCuda.test_allocator_settings / test_allocator_memory_fraction_setting: ValueError."""
    with pytest.raises(AllocatorConfigError):
        AllocatorConfig.parse(text)


def test_torch_memory_snapshot_second_block() -> None:
    """TestCuda.test_memory_snapshot: after a freed 2*311x411 float tensor, x is the second block."""
    a = CachingAllocator()
    a.free(a.malloc(2 * 311 * 411 * 4))
    a.malloc(310 * 410 * 4)
    x = a.malloc(311 * 411 * 4)
    ptrs = [a.malloc(128 * 4) for _ in range(1000)]
    random.Random(0).shuffle(ptrs)
    for p in ptrs:
        a.free(p)
    a.malloc(128 * 5 * 4)
    found = [b for s in a.segments() for b in s["blocks"] if b["requested_size"] == 311 * 411 * 4]
    assert [b["address"] for b in found] == [x]
    segment = next(s for s in a.segments() if s["address"] <= x < s["address"] + s["total_size"])
    assert segment["blocks"][1]["address"] == x


def _fraction_allocator(allowed: int, config: str) -> CachingAllocator:
    capacity = 8 * allowed
    a = CachingAllocator(AllocatorConfig.parse(config), capacity_bytes=capacity)
    a.set_memory_fraction(allowed / capacity)
    assert a.allowed_memory_maximum == allowed
    return a


def test_torch_max_split_expandable() -> None:
    """TestCuda.test_max_split_expandable: 3 x 40 MB fill 120 MB; a 4th OOMs; 120 MB fits once freed."""
    a = _fraction_allocator(120 * MB, "expandable_segments:False,max_split_size_mb:40")
    first = a.malloc(40 * MB)
    a.set_allocator_settings("expandable_segments:True,max_split_size_mb:40")
    second = a.malloc(40 * MB)
    a.set_allocator_settings("expandable_segments:False,max_split_size_mb:40")
    third = a.malloc(40 * MB)
    with pytest.raises(OutOfMemoryError):
        a.malloc(40 * MB)
    for p in (first, second, third):
        a.free(p)
    a.malloc(120 * MB)  # release_cached_blocks with an expandable segment in the free list
    assert _stat(a, "reserved_bytes.all.current") == 120 * MB
    assert a.expandable_segments == []


def test_torch_garbage_collect_expandable() -> None:
    """TestCuda.test_garbage_collect_expandable: GC runs with an expandable block in the free list."""
    a = _fraction_allocator(120 * MB, "expandable_segments:False,garbage_collection_threshold:0.5")
    first = a.malloc(40 * MB)
    a.set_allocator_settings("expandable_segments:True,garbage_collection_threshold:0.5")
    second = a.malloc(40 * MB)
    a.free(first)
    a.free(second)
    a.malloc(80 * MB)
    assert _stat(a, "reserved_bytes.all.current") <= 120 * MB


@pytest.mark.parametrize("config", ["", "max_split_size_mb:1024"])
def test_torch_raises_oom(config: str) -> None:
    """TestCuda.test_raises_oom: a 4 TiB float tensor does not fit."""
    a = CachingAllocator(AllocatorConfig.parse(config), capacity_bytes=80 * 1024 * MB)
    with pytest.raises(OutOfMemoryError):
        a.malloc(4 * 1024**4)
    assert _stat(a, "num_ooms") == 1


def test_torch_raw_alloc_requested_bytes() -> None:
    """TestCuda.test_cachingAllocator_raw_alloc: requested_bytes.all.allocated grows by the request."""
    a = CachingAllocator()
    before = _stat(a, "requested_bytes.all.allocated")
    a.free(a.malloc(MB))
    assert _stat(a, "requested_bytes.all.allocated") - before == MB


def _check_invariants(a: CachingAllocator) -> None:
    segments = a.segments()
    allocated = [b for s in segments for b in s["blocks"] if b["state"] == "active_allocated"]
    assert sum(b["size"] for b in allocated) == _stat(a, "allocated_bytes.all.current")
    assert sum(s["total_size"] for s in segments) == _stat(a, "reserved_bytes.all.current")
    for s in segments:
        cursor = s["address"]
        for prev, block in zip([None, *s["blocks"]], s["blocks"], strict=False):
            assert block["address"] == cursor
            cursor += block["size"]
            assert not (prev and prev["state"] == block["state"] == "inactive"), "free neighbours unmerged"


def test_torch_allocator_fuzz() -> None:
    """TestCuda.test_allocator_fuzz: random int32 tensors of 2..20 MB, frees, empty_cache; invariants hold."""
    rng = random.Random(123)
    a = CachingAllocator()
    live: list[tuple[int, int]] = []
    total = 0
    for _ in range(3000):
        while total >= 1024 * MB // 10:
            _, n = live.pop(rng.randrange(len(live)))
            total -= n
        action = rng.choices(["alloc", "free", "empty"], weights=[1, 1 if live else 0, 0.1])[0]
        if action == "alloc":
            n = 4 * rng.randrange(2 * MB // 4, 20 * MB // 4)
            live.append((a.malloc(n), n))
            total += n
        elif action == "free":
            ptr, n = live.pop(rng.randrange(len(live)))
            a.free(ptr)
            total -= n
        else:
            a.empty_cache()
    _check_invariants(a)


def test_torch_memory_stats_generator() -> None:
    """TestCuda._test_memory_stats_generator: allocated grows, zero-size changes nothing, back to start."""
    requests, key = [], 0
    shapes = [(1,), (10, 20), (200, 300, 2000)] + [(i, i * 4) for i in range(1, 18)]
    shapes += [(i, i * 7, i * 9, i * 11) for i in range(5, 22)] + [(0, 0, 0)]
    for shape in shapes:
        n = 4
        for d in shape:
            n *= d
        requests.append(AllocRequest("alloc", key, n))
        key += 1
    requests += [AllocRequest("free", k) for k in reversed(range(key))]
    stats = replay(requests)
    assert stats.allocated_bytes == 0
    assert stats.allocated_peak_bytes >= stats.requested_peak_bytes
    assert stats.requested_peak_bytes == sum(r.size for r in requests if r.action == "alloc")


# ---- the source's constants and branches -------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "rounded"), [(1, 512), (512, 512), (513, 1024), (1000, 1024), (MB + 1, MB + 512)]
)
def test_round_size_512(size: int, rounded: int) -> None:
    assert AllocatorConfig().round_size(size) == rounded


def test_roundup_power2_next_division_source_example() -> None:
    """The comment in CUDACachingAllocator.cpp: 1200 with 4 divisions -> 1280."""
    assert roundup_power2_next_division(1200, 4) == 1280
    assert roundup_power2_next_division(1024, 4) == 1024
    cfg = AllocatorConfig.parse("roundup_power2_divisions:4")
    assert cfg.round_size(1200) == 1536  # divisions apply only above 512 * divisions
    assert cfg.round_size(5000) == 5120


def test_divisions_list_intervals() -> None:
    cfg = AllocatorConfig.parse("roundup_power2_divisions:[64:8,256:4,>:1]")
    assert cfg.roundup_power2_divisions_list == (8,) * 7 + (0, 4) + (1,) * 7
    assert cfg.roundup_power2_divisions(100 * MB) == 8
    assert cfg.roundup_power2_divisions(300 * MB) == 4


@pytest.mark.parametrize(
    ("size", "segment"),
    [
        (512, 2 * MB),
        (MB, 2 * MB),
        (MB + 1, 20 * MB),
        (10 * MB - 512, 20 * MB),
        (10 * MB - 1, 10 * MB),
        (11 * MB + 1, 12 * MB),
    ],
)
def test_segment_sizes(size: int, segment: int) -> None:
    """get_allocation_size: small pool 2 MiB, large 20 MiB below 10 MiB, else rounded to 2 MiB."""
    a = CachingAllocator()
    a.malloc(size)
    assert [s["total_size"] for s in a.segments()] == [segment]
    assert a.segments()[0]["segment_type"] == ("small" if size <= MB else "large")


def test_large_split_needs_more_than_1mib_remainder() -> None:
    """should_split: large pool splits only when the remainder is > kSmallSize."""
    a = CachingAllocator()
    a.free(a.malloc(12 * MB))
    p = a.malloc(11 * MB)  # remainder exactly 1 MiB: kept in the block
    assert a.block_size(p) == 12 * MB
    a.free(p)
    p = a.malloc(11 * MB - 512)  # remainder 1 MiB + 512: split off
    assert a.block_size(p) == 11 * MB - 512
    assert _stat(a, "inactive_split_bytes.all.current") == MB + 512


def test_small_split_from_512() -> None:
    """should_split: the small pool splits off any remainder of 512 B or more."""
    a = CachingAllocator()
    a.malloc(MB)
    p = a.malloc(MB - 512)
    assert a.block_size(p) == MB - 512
    assert [b["size"] for b in a.segments()[0]["blocks"]] == [MB, MB - 512, 512]


def test_best_fit_by_size_then_address() -> None:
    a = CachingAllocator()
    big = [a.malloc(12 * MB) for _ in range(3)]
    a.free(big[2])
    a.free(big[0])
    assert a.malloc(12 * MB) == big[0]  # same size: the lower address
    a.free(a.malloc(30 * MB))
    assert a.malloc(11 * MB) == big[2]  # the smallest block that fits, not the 30 MB one


def test_free_neighbours_merge() -> None:
    a = CachingAllocator()
    ps = [a.malloc(4 * MB) for _ in range(4)]
    for p in (ps[1], ps[0], ps[2]):
        a.free(p)
    assert [(b["size"], b["state"]) for b in a.segments()[0]["blocks"]] == [
        (12 * MB, "inactive"),
        (4 * MB, "active_allocated"),
        (4 * MB, "inactive"),
    ]


def test_max_split_size_oversize_blocks() -> None:
    """get_free_block: no oversize block for a small request; oversize reuse within 20 MiB."""
    a = CachingAllocator(AllocatorConfig.parse("max_split_size_mb:100"))
    a.free(a.malloc(200 * MB))
    small = a.malloc(50 * MB)
    assert _stat(a, "segment.all.current") == 2  # not carved out of the 200 MB block
    p = a.malloc(190 * MB)
    assert a.block_size(p) == 200 * MB  # oversize: never split
    a.free(p)
    a.free(small)
    a.malloc(150 * MB)
    assert _stat(a, "segment.all.current") == 3  # 200 >= 150 + 20: a new segment


def test_free_and_retry_releases_cached_segments() -> None:
    a = CachingAllocator(capacity_bytes=100 * MB)
    a.free(a.malloc(60 * MB))
    a.malloc(80 * MB)
    assert _stat(a, "num_alloc_retries") == 1
    assert _stat(a, "reserved_bytes.all.current") == 80 * MB


def test_expandable_segments_pages() -> None:
    a = CachingAllocator(AllocatorConfig.parse("expandable_segments:True"), capacity_bytes=80 * 1024 * MB)
    p = a.malloc(30 * MB)
    assert _stat(a, "reserved_bytes.all.current") == 40 * MB  # two 20 MiB pages
    q = a.malloc(25 * MB)
    assert _stat(a, "reserved_bytes.all.current") == 60 * MB
    assert len(a.segments()) == 1 and a.segments()[0]["is_expandable"]
    a.malloc(1000)
    assert _stat(a, "reserved_bytes.small_pool.current") == 2 * MB
    a.free(q)
    a.free(p)
    a.empty_cache()
    assert _stat(a, "reserved_bytes.large_pool.current") == 0


def test_env_precedence() -> None:
    env = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:64", "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:32"}
    assert AllocatorConfig.from_env(env).max_split_size == 32 * MB
    assert AllocatorConfig.from_env({"PYTORCH_ALLOC_CONF": "expandable_segments:True"}).expandable_segments
    assert AllocatorConfig.from_env({}) == AllocatorConfig()


def test_parse_full_option_string() -> None:
    text = (
        "max_split_size_mb:128,roundup_power2_divisions:4,garbage_collection_threshold:0.6,"
        "expandable_segments:True"
    )
    cfg = AllocatorConfig.parse(text)
    assert (cfg.max_split_size, cfg.garbage_collection_threshold, cfg.expandable_segments) == (
        128 * MB,
        0.6,
        True,
    )
    assert set(cfg.roundup_power2_divisions_list) == {4}
    assert AllocatorConfig.parse("large_segment_size_mb:64").allocation_size(2 * MB) == 64 * MB


def test_replay_events_peaks_and_segments() -> None:
    events = [("alloc", 1, 1000), ("alloc", 2, 3 * MB), ("free", 1, 0), ("alloc", 3, 30 * MB), ("free", 2, 0)]
    stats = replay_events(events)
    assert stats.allocated_peak_bytes == 1024 + 3 * MB + 30 * MB - 1024
    assert stats.requested_peak_bytes == 3 * MB + 30 * MB
    assert stats.reserved_peak_bytes == 2 * MB + 20 * MB + 30 * MB
    assert sum(s["total_size"] for s in stats.segments_at_reserved_peak) == stats.reserved_peak_bytes
    assert stats.to_json()["reserved_peak_bytes"] == stats.reserved_peak_bytes


def test_replay_stops_at_oom() -> None:
    stats = replay_events([("alloc", 1, 50 * MB), ("alloc", 2, 60 * MB)], capacity_bytes=100 * MB)
    assert stats.oom_at == 1 and stats.num_ooms == 1


class _StatByStat(DeviceStats):
    """A block's stats moved as the source writes them, one `change` per stat (the model moves them in one
    call, `allocated` / `released` / `split_change`)."""

    def allocated(self, is_small: bool, size: int, requested: int) -> None:
        for name, amount in _block_changes(size, requested):
            self.change(name, is_small, amount)

    def released(self, is_small: bool, size: int, requested: int) -> None:
        for name, amount in _block_changes(size, requested):
            self.change(name, is_small, -amount)

    def split_change(self, is_small: bool, count: int, nbytes: int) -> None:
        self.change("inactive_split", is_small, count)
        self.change("inactive_split_bytes", is_small, nbytes)


def _block_changes(size: int, requested: int) -> tuple[tuple[str, int], ...]:
    return (
        ("allocation", 1),
        ("allocated_bytes", size),
        ("active", 1),
        ("active_bytes", size),
        ("requested_bytes", requested),
    )


@pytest.mark.parametrize("conf", ["", "max_split_size_mb:20", "roundup_power2_divisions:4"])
def test_block_stats_in_one_call_are_the_source_changes(conf: str) -> None:
    """Random mallocs and frees of small, large and oversize requests: every memory_stats key, peaks
    included, and every segment the same as with the stats changed one by one."""
    config = AllocatorConfig.parse(conf) if conf else AllocatorConfig()
    rng, fast, slow = random.Random(7), CachingAllocator(config), CachingAllocator(config)
    slow.stats = _StatByStat()
    live: list[tuple[int, int]] = []
    for _ in range(4000):
        if live and rng.random() < 0.48:
            a, b = live.pop(rng.randrange(len(live)))
            fast.free(a)
            slow.free(b)
        else:
            size = rng.randrange(1, rng.choice((4096, 2 * MB, 64 * MB)))
            live.append((fast.malloc(size), slow.malloc(size)))
    assert fast.memory_stats() == slow.memory_stats()
    assert fast.memory_stats()["inactive_split.all.peak"] > 0
    assert fast.segments() == slow.segments()


@pytest.mark.parametrize("conf", ["", "max_split_size_mb:20"])
def test_figures_only_stats_give_the_placement_figures(conf: str) -> None:
    """A placement's allocator (`figures_only`, FigureStats) serves random requests at the same addresses,
    with the same segments and the same figures `_finish` reads, as one keeping every statistic."""
    config = AllocatorConfig.parse(conf) if conf else AllocatorConfig()
    rng = random.Random(11)
    full, lean = CachingAllocator(config), CachingAllocator(config, figures_only=True)
    live: list[int] = []
    for _ in range(4000):
        if live and rng.random() < 0.48:
            ptr = live.pop(rng.randrange(len(live)))
            full.free(ptr)
            lean.free(ptr)
        else:
            size = rng.randrange(1, rng.choice((4096, 2 * MB, 64 * MB)))
            ptr = full.malloc(size)
            assert lean.malloc(size) == ptr
            live.append(ptr)
        if rng.random() < 0.01:  # now and then, the segments block for block
            assert full.segments() == lean.segments()
    for name in ("allocated_bytes", "requested_bytes", "reserved_bytes", "segment"):
        a, b = full.stats.get(name), lean.stats.get(name)
        assert (a.current, a.peak) == (b.current, b.peak), name
    assert full.stats.get("requested_bytes").peak > 0
    assert full.segments() == lean.segments()
    with pytest.raises(NotImplementedError):
        lean.memory_stats()


@pytest.mark.parametrize(
    "conf", ["", "max_split_size_mb:20", "expandable_segments:True", "garbage_collection_threshold:0.5"]
)
def test_a_fork_serves_as_the_allocator_it_was_forked_from(conf: str) -> None:
    """`fork` mid-way through random requests: the fork and the original serve the rest at the same
    addresses, with the same segments and every memory_stats key, and the original is left as it was (the
    fork shares no block, pool or statistic with it)."""
    config = AllocatorConfig.parse(conf) if conf else AllocatorConfig()
    rng = random.Random(5)
    alloc = CachingAllocator(config, capacity_bytes=8 * 1024 * MB)
    alloc.set_memory_fraction(0.75)
    live: list[int] = []

    def one(allocs: list[CachingAllocator]) -> None:
        if live and rng.random() < 0.48:
            ptr = live.pop(rng.randrange(len(live)))
            for a in allocs:
                a.free(ptr)
        else:
            size = rng.randrange(1, rng.choice((4096, 2 * MB, 64 * MB)))
            ptrs = {a.malloc(size) for a in allocs}
            assert len(ptrs) == 1
            live.extend(ptrs)

    for _ in range(2000):
        one([alloc])
    before = (alloc.segments(), alloc.memory_stats())
    fork, kept = alloc.fork(), list(live)
    assert (fork.segments(), fork.memory_stats()) == before
    for _ in range(50):  # the fork alone: the original does not move
        one([fork])
    assert (alloc.segments(), alloc.memory_stats()) == before
    live[:] = kept
    fork = alloc.fork()
    for _ in range(2000):
        one([alloc, fork])
        if rng.random() < 0.01:
            assert fork.segments() == alloc.segments()
    assert fork.segments() == alloc.segments()
    assert fork.memory_stats() == alloc.memory_stats()
    assert alloc.memory_stats()["reserved_bytes.all.peak"] > 64 * MB and len(alloc.segments()) > 1 and kept
