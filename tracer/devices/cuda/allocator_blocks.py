"""Blocks, block pools and statistics of the CUDA caching allocator model (pure Python, no torch).

Ported from `c10/cuda/CUDACachingAllocator.cpp` (PyTorch 2.13): `struct Block` (size, requested_size,
ptr, allocated, mapped, prev/next of a split segment), `struct BlockPool` whose free blocks are a
`std::set` ordered by `BlockComparatorSize` (stream, size, address) and whose unmapped expandable ranges
are ordered by `BlockComparatorAddress` (stream, address); and `c10/core/CachingDeviceAllocator.h`'s
`Stat` (current, peak, allocated, freed) kept for the aggregate, small and large pools.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(eq=False)
class ExpandableSegment:
    """`struct ExpandableSegment`: a reserved address range mapped in pages of `page_size`."""

    base: int
    page_size: int
    max_pages: int
    stream: int
    mapped: set[int] = field(default_factory=set)  # page indices backed by physical memory

    @property
    def size(self) -> int:
        return self.page_size * self.max_pages


@dataclass(eq=False, slots=True)
class Block:
    """One block of a segment: allocated, cached free, or (expandable) unmapped address space."""

    stream: int
    size: int
    ptr: int
    pool: BlockPool
    requested_size: int = 0
    allocated: bool = False
    mapped: bool = True
    prev: Block | None = None
    next: Block | None = None
    expandable: ExpandableSegment | None = None
    gc_count_base: int = 0
    key: tuple[int, ...] = ()  # the key it was inserted under, while in a sorted set

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def splice(self, before: Block | None, after: Block | None) -> None:
        """`Block::splice`: insert this block between `before` and `after`."""
        if before is not None:
            before.next = self
        self.prev = before
        if after is not None:
            after.prev = self
        self.next = after


class SortedBlocks:
    """A `std::set<Block*>` with the given order: `by_size` (stream, size, ptr) or by (stream, ptr)."""

    def __init__(self, by_size: bool) -> None:
        self.by_size = by_size
        self.keys: list[tuple[int, ...]] = []
        self.items: list[Block] = []

    def key_of(self, block: Block) -> tuple[int, ...]:
        return (block.stream, block.size, block.ptr) if self.by_size else (block.stream, block.ptr)

    def insert(self, block: Block) -> None:
        key = (block.stream, block.size, block.ptr) if self.by_size else (block.stream, block.ptr)  # key_of
        block.key = key
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.items.insert(i, block)

    def remove(self, block: Block) -> None:
        i = bisect.bisect_left(self.keys, block.key)
        if i >= len(self.items) or self.items[i] is not block:
            raise KeyError("block not in the set")
        del self.keys[i]
        del self.items[i]

    def discard(self, block: Block) -> bool:
        i = bisect.bisect_left(self.keys, block.key)
        if i < len(self.items) and self.items[i] is block:
            del self.keys[i]
            del self.items[i]
            return True
        return False

    def lower_bound(self, key: tuple[int, ...]) -> int:
        return bisect.bisect_left(self.keys, key)

    def __len__(self) -> int:
        return len(self.items)


class BlockPool:
    """`struct BlockPool`: the cached free blocks of one pool (small: <= 1 MiB, or large)."""

    def __init__(self, is_small: bool) -> None:
        self.is_small = is_small
        self.blocks = SortedBlocks(by_size=True)
        self.unmapped = SortedBlocks(by_size=False)
        self.get_free_blocks_call_count = 0

    def insert_into_blocks(self, block: Block) -> None:
        """`BlockPool::insert_into_blocks`: insert and stamp the garbage-collection age base."""
        block.gc_count_base = self.get_free_blocks_call_count
        self.blocks.insert(block)

    def gc_count(self, block: Block) -> int:
        return self.get_free_blocks_call_count - block.gc_count_base


@dataclass(slots=True)
class Stat:
    """`c10::CachingDeviceAllocator::Stat`: current, peak, and the running totals allocated and freed."""

    current: int = 0
    peak: int = 0
    allocated: int = 0
    freed: int = 0

    def increase(self, amount: int) -> None:
        self.current += amount
        self.peak = max(self.peak, self.current)
        self.allocated += amount

    def decrease(self, amount: int) -> None:
        self.current -= amount
        self.freed += amount

    def reset_peak(self) -> None:
        self.peak = self.current

    def set_to(self, other: Stat) -> None:
        """The same four figures as `other` (this object kept: the stats' pairs and pools refer to it)."""
        self.current, self.peak, self.allocated, self.freed = (
            other.current,
            other.peak,
            other.allocated,
            other.freed,
        )


STAT_NAMES = (
    "allocation",
    "segment",
    "active",
    "inactive_split",
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
)
POOL_NAMES = ("all", "small_pool", "large_pool")
_BLOCK_STATS = (("allocation", "active"), ("allocated_bytes", "active_bytes"), ("requested_bytes",))


class DeviceStats:
    """`DeviceStats`: each array stat for the aggregate, small pool and large pool, plus counters."""

    def __init__(self) -> None:
        self.arrays: dict[str, dict[str, Stat]] = {n: {p: Stat() for p in POOL_NAMES} for n in STAT_NAMES}
        self._pairs = {  # per stat, by is_small: the aggregate and the pool's, as `change` moves them
            n: {small: (p["all"], p["small_pool" if small else "large_pool"]) for small in (False, True)}
            for n, p in self.arrays.items()
        }
        self.counters: dict[str, int] = {
            "num_alloc_retries": 0,
            "num_ooms": 0,
            "num_sync_all_streams": 0,
            "num_device_alloc": 0,
            "num_device_free": 0,
        }
        self.oversize_allocations = Stat()
        self.oversize_segments = Stat()
        self._blocks = {  # per is_small: what a block handed out or given back moves, aggregate and pool:
            small: tuple(  # (allocation, active), (allocated_bytes, active_bytes), (requested_bytes,)
                tuple(s for n in names for s in self._pairs[n][small]) for names in _BLOCK_STATS
            )
            for small in (False, True)
        }

    def change(self, name: str, is_small: bool, amount: int) -> None:
        """Increase (amount > 0) or decrease the aggregate and the pool's stat, as the source pairs them
        (`Stat.increase` / `decrease` inlined: the replay of a large step calls this a million times)."""
        for stat in self._pairs[name][is_small]:
            if amount >= 0:
                current = stat.current + amount
                stat.current = current
                if current > stat.peak:
                    stat.peak = current
                stat.allocated += amount
            else:
                stat.current += amount
                stat.freed -= amount

    def allocated(self, is_small: bool, size: int, requested: int) -> None:
        """A block of `size` handed out for `requested` bytes: `change` of allocation and active by 1,
        allocated_bytes and active_bytes by size, requested_bytes by requested, in one call: one loop per
        amount, `Stat.increase` inlined (a long decode's placement calls it half a million times; calling it
        here made a placement's allocate and free about 1.5x slower)."""
        counts, sizes, requests = self._blocks[is_small]
        for stat in counts:  # allocation and active, aggregate and pool
            current = stat.current + 1
            stat.current = current
            if current > stat.peak:
                stat.peak = current
            stat.allocated += 1
        for stat in sizes:  # allocated_bytes and active_bytes
            current = stat.current + size
            stat.current = current
            if current > stat.peak:
                stat.peak = current
            stat.allocated += size
        for stat in requests:  # requested_bytes
            current = stat.current + requested
            stat.current = current
            if current > stat.peak:
                stat.peak = current
            stat.allocated += requested

    def released(self, is_small: bool, size: int, requested: int) -> None:
        """The same block given back: each of `allocated`'s changes decreased by the same amount."""
        counts, sizes, requests = self._blocks[is_small]
        for stat in counts:
            stat.current -= 1
            stat.freed += 1
        for stat in sizes:
            stat.current -= size
            stat.freed += size
        for stat in requests:
            stat.current -= requested
            stat.freed += requested

    def split_change(self, is_small: bool, count: int, nbytes: int) -> None:
        """`change` of inactive_split by `count` and of inactive_split_bytes by `nbytes`, in one call (the
        placement's `FigureStats` keeps neither, and makes this nothing)."""
        self.change("inactive_split", is_small, count)
        self.change("inactive_split_bytes", is_small, nbytes)

    def copy(self) -> DeviceStats:
        """The same figures in a new instance of this class (its pairs of `Stat`s made anew)."""
        new = type(self)()
        for name, pools in self.arrays.items():
            for pool, stat in pools.items():
                new.arrays[name][pool].set_to(stat)
        new.oversize_allocations.set_to(self.oversize_allocations)
        new.oversize_segments.set_to(self.oversize_segments)
        new.counters = dict(self.counters)
        return new

    def get(self, name: str, pool: str = "all") -> Stat:
        return self.arrays[name][pool]

    def as_dict(self) -> dict[str, int]:
        """Flat keys as `torch.cuda.memory_stats()` writes them: `allocated_bytes.all.peak`, ..."""
        out: dict[str, int] = {}
        for name, pools in self.arrays.items():
            for pool, stat in pools.items():
                for metric in ("current", "peak", "allocated", "freed"):
                    out[f"{name}.{pool}.{metric}"] = getattr(stat, metric)
        for metric in ("current", "peak", "allocated", "freed"):
            out[f"oversize_allocations.{metric}"] = getattr(self.oversize_allocations, metric)
            out[f"oversize_segments.{metric}"] = getattr(self.oversize_segments, metric)
        out.update(self.counters)
        return out

    def reset_peak(self) -> None:
        for pools in self.arrays.values():
            for stat in pools.values():
                stat.reset_peak()
        self.oversize_allocations.reset_peak()
        self.oversize_segments.reset_peak()


class FigureStats(DeviceStats):
    """The statistics a placement reports, and only those: the aggregate allocated and requested bytes (and,
    through `change`, segments and reserved bytes, as `DeviceStats`). A block handed out or given back moves
    two stats, not ten, and a split none: the per-pool, active and inactive-split figures are not kept,
    so `as_dict` is refused. `served.replay_served` places a long decode's million requests with it."""

    def __init__(self) -> None:
        super().__init__()
        self._figures = (self.arrays["allocated_bytes"]["all"], self.arrays["requested_bytes"]["all"])

    def allocated(self, is_small: bool, size: int, requested: int) -> None:
        allocated, asked = self._figures  # `Stat.increase` inlined, as in `DeviceStats.allocated`
        current = allocated.current + size
        allocated.current = current
        if current > allocated.peak:
            allocated.peak = current
        allocated.allocated += size
        current = asked.current + requested
        asked.current = current
        if current > asked.peak:
            asked.peak = current
        asked.allocated += requested

    def released(self, is_small: bool, size: int, requested: int) -> None:
        allocated, asked = self._figures
        allocated.current -= size
        allocated.freed += size
        asked.current -= requested
        asked.freed += requested

    def split_change(self, is_small: bool, count: int, nbytes: int) -> None:
        return None

    def as_dict(self) -> dict[str, int]:
        raise NotImplementedError("FigureStats keeps the placement's figures only, not memory_stats()")
