"""The CUDA caching allocator's malloc/free, ported from PyTorch 2.13 (pure Python, no torch import).

Each method names the `DeviceCachingAllocator` member of `c10/cuda/CUDACachingAllocator.cpp` it ports:
`malloc` (search, garbage collection, cudaMalloc, free-and-retry, OOM), `get_free_block` (best fit by
(stream, size, address), oversize blocks vs max_split_size / max_non_split_rounding_size),
`should_split`, `alloc_found_block`, `free`, `free_block` / `try_merge_blocks`, `alloc_block`,
`release_available_cached_blocks`, `release_cached_blocks` / `release_blocks` / `release_block`,
`garbage_collect_cached_blocks`, `snapshot`. Expandable segments are in `allocator_expandable`.

Left out: CUDA graph private pools and MemPools, cross-stream uses (recordStream events: a block is
returned to its pool at free), the free-memory callbacks, IPC. The device is a capacity in bytes:
cudaMalloc fails when the bytes reserved plus the request exceed it (no driver fragmentation).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from .allocator_blocks import Block, BlockPool, DeviceStats, FigureStats
from .allocator_config import K_MIN_BLOCK_SIZE, K_SMALL_SIZE, SIZE_MAX, AllocatorConfig
from .allocator_expandable import ExpandableMixin

_FIRST_ADDRESS = 0x7F0000000000  # where the model's own cudaMalloc addresses start (2 MiB aligned)


class OutOfMemoryError(RuntimeError):
    """What `torch.cuda.OutOfMemoryError` would be: no block, no segment, nothing left to release."""


@dataclass(slots=True)
class AllocParams:
    """`struct AllocParams`: the rounded size, stream, pool and segment size of one malloc."""

    size: int
    stream: int
    pool: BlockPool
    alloc_size: int
    expandable_active: bool
    block: Block | None = None


class CachingAllocator(ExpandableMixin):
    """One device's `DeviceCachingAllocator`: `malloc(size, stream) -> address`, `free(address)`."""

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        capacity_bytes: int | None = None,
        address_source: Callable[[int], int] | None = None,
        figures_only: bool = False,
    ) -> None:
        """`figures_only`: keep only the statistics a placement reports (`FigureStats`), no memory_stats()."""
        self.config = config or AllocatorConfig()
        self.capacity_bytes = capacity_bytes
        self.address_source = address_source
        self.small = BlockPool(is_small=True)
        self.large = BlockPool(is_small=False)
        self.active: dict[int, Block] = {}
        self.stats = FigureStats() if figures_only else DeviceStats()
        self._splits_counted = not figures_only  # FigureStats keeps no inactive-split statistics
        self.total_allocated_memory = 0  # bytes held from the device (reserved)
        self.allowed_memory_maximum: int | None = None
        self.segment_events: list[tuple[str, int, int]] = []  # (segment_alloc|segment_free, ptr, size)
        self._next_address = _FIRST_ADDRESS
        self._sizes: dict[int, tuple[int, int]] = {}  # request -> (rounded size, segment size) under:
        self._sizes_for = self.config
        self._init_expandable()
        fraction = self.config.per_process_memory_fraction
        if fraction < 1.0 and capacity_bytes is not None:
            self.set_memory_fraction(fraction)

    # ---- public API -------------------------------------------------------------------------------
    def set_allocator_settings(self, text: str) -> None:
        """`torch.cuda.memory._set_allocator_settings(text)` between requests."""
        self.config = self.config.updated(text)

    def set_memory_fraction(self, fraction: float) -> None:
        """`setMemoryFraction`: cap the bytes reserved; this also arms garbage_collection_threshold."""
        if self.capacity_bytes is None:
            raise ValueError("a memory fraction needs capacity_bytes")
        self.allowed_memory_maximum = None if fraction >= 1.0 else int(fraction * self.capacity_bytes)

    def malloc(self, orig_size: int, stream: int = 0) -> int:
        """`DeviceCachingAllocator::malloc`: the address of the block given to a request of `orig_size`."""
        cfg = self.config
        if cfg is not self._sizes_for:  # the settings changed: round again
            self._sizes, self._sizes_for = {}, cfg
        sizes = self._sizes.get(orig_size)
        if sizes is None:
            size = cfg.round_size(orig_size)
            sizes = self._sizes[orig_size] = (size, cfg.allocation_size(size))
        size = sizes[0]
        pool = self.small if size <= K_SMALL_SIZE else self.large
        if not cfg.expandable_segments and self.allowed_memory_maximum is None:
            cached = self._cached_fit(pool, size, stream)  # the common case, without AllocParams
            if cached is not None:
                remaining = cached.size - size  # `_should_split` (not expandable), inlined
                if pool.is_small:
                    split = remaining >= K_MIN_BLOCK_SIZE
                else:
                    split = size < cfg.max_split_size and remaining > K_SMALL_SIZE
                return self._alloc_found_block(cached, size, stream, orig_size, split).ptr
        p = AllocParams(size, stream, pool, sizes[1], cfg.expandable_segments)
        found = self._get_free_block(p)
        if not found:
            if self.allowed_memory_maximum is not None and cfg.garbage_collection_threshold > 0.0:
                self._garbage_collect_cached_blocks()
            found = (
                self._alloc_block(p, False)
                or (self._release_available_cached_blocks(p) and self._alloc_block(p, False))
                or (self._release_cached_blocks() and self._alloc_block(p, True))
            )
        if not found or p.block is None:
            self.stats.counters["num_ooms"] += 1
            raise OutOfMemoryError(self._oom_message(p.alloc_size))
        split = self._should_split(p.block, size, p.expandable_active)
        return self._alloc_found_block(p.block, size, stream, orig_size, split).ptr

    def free(self, ptr: int) -> None:
        """`DeviceCachingAllocator::free`: the block goes back to its pool at once (no stream uses)."""
        block = self.active.pop(ptr)
        block.allocated = False
        if block.size >= self.config.max_split_size:
            self.stats.oversize_allocations.decrease(1)
        self._free_block(block)  # and allocation, allocated_bytes as the source changes them here

    def empty_cache(self) -> None:
        """`emptyCache`: release every cached block that is a whole segment."""
        self._release_cached_blocks()

    def memory_stats(self) -> dict[str, int]:
        """The figures of `torch.cuda.memory_stats()`, same flat keys."""
        return self.stats.as_dict()

    def reset_peak_stats(self) -> None:
        self.stats.reset_peak()

    def block_size(self, ptr: int) -> int:
        return self.active[ptr].size

    def fork(self) -> CachingAllocator:
        """A copy that serves the same requests the same way from here: every block (cached, allocated and
        unmapped), both pools in their order, the expandable segments, the statistics and the next
        address, copied; the settings shared (frozen). What `served.replay_served` keeps at a rise of the
        reserved peak, to replay the few requests after it up to the peak's last rise."""
        if self.address_source is not None:  # a source of addresses may keep state of its own
            raise ValueError("an allocator with an address_source cannot be forked")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        segments = {id(s): replace(s, mapped=set(s.mapped)) for s in self.expandable_segments}
        new.expandable_segments = [segments[id(s)] for s in self.expandable_segments]
        new.small, new.large = BlockPool(is_small=True), BlockPool(is_small=False)
        pools = {self.small: new.small, self.large: new.large}
        copies: dict[Block, Block] = {}  # by identity (a Block compares by identity)
        for head in chain(
            self.small.blocks.items,
            self.small.unmapped.items,
            self.large.blocks.items,
            self.large.unmapped.items,
            self.active.values(),
        ):
            if head.prev is not None:
                continue  # copied with the chain of its segment, from the segment's first block
            old: Block | None = head
            made: Block | None = None
            while old is not None:  # the segment's blocks in address order, linked as they are copied
                block = Block(
                    old.stream,
                    old.size,
                    old.ptr,
                    pools[old.pool],
                    old.requested_size,
                    old.allocated,
                    old.mapped,
                    made,
                    None,
                    None if old.expandable is None else segments[id(old.expandable)],
                    old.gc_count_base,
                    old.key,
                )
                if made is not None:
                    made.next = block
                copies[old] = made = block
                old = old.next
        for mine, theirs in ((new.small, self.small), (new.large, self.large)):
            mine.get_free_blocks_call_count = theirs.get_free_blocks_call_count
            for sorted_new, sorted_old in ((mine.blocks, theirs.blocks), (mine.unmapped, theirs.unmapped)):
                sorted_new.keys = list(sorted_old.keys)
                sorted_new.items = [copies[b] for b in sorted_old.items]
        new.active = {ptr: copies[b] for ptr, b in self.active.items()}
        new.stats = self.stats.copy()
        new.segment_events = list(self.segment_events)
        new._sizes = dict(self._sizes)
        return new

    # ---- malloc internals -------------------------------------------------------------------------
    def _oom_message(self, alloc_size: int) -> str:
        allocated = self.stats.get("allocated_bytes").current
        reserved = self.stats.get("reserved_bytes").current
        return (
            f"CUDA out of memory. Tried to allocate {alloc_size} bytes of {self.capacity_bytes}; "
            f"{allocated} bytes allocated, {reserved - allocated} reserved but unallocated."
        )

    def _get_free_block(self, p: AllocParams) -> bool:
        """`get_free_block`: the first cached block >= size on the stream, in (size, address) order."""
        pool, cfg = p.pool, self.config
        if self.allowed_memory_maximum is not None and cfg.garbage_collection_threshold > 0.0:
            pool.get_free_blocks_call_count += 1
        items = pool.blocks.items
        i = pool.blocks.lower_bound((p.stream, p.size, 0))
        if i == len(items) or items[i].stream != p.stream:
            return False
        if items[i].expandable is not None:
            i = self._expandable_best_fit(items, i, p)
            if i < 0:
                return False
        block = items[i]
        if p.size < cfg.max_split_size and block.size >= cfg.max_split_size:
            return False  # do not return an oversized block for a large request
        if p.size >= cfg.max_split_size and block.size >= p.size + cfg.max_non_split_rounding_size:
            return False  # oversize blocks may be rounded up, within a limit
        p.block = block
        pool.blocks.remove(block)
        return True

    def _cached_fit(self, pool: BlockPool, size: int, stream: int) -> Block | None:
        """`get_free_block` where it finds a plain cached block (no expandable segment, no memory fraction to
        count calls for): the block, taken out of its pool; None where `_get_free_block` must decide."""
        blocks = pool.blocks
        keys = blocks.keys
        i = bisect_left(keys, (stream, size, 0))
        if i == len(keys):
            return None
        block = blocks.items[i]
        if block.stream != stream or block.expandable is not None:
            return None
        cfg = self.config
        if size < cfg.max_split_size:
            if block.size >= cfg.max_split_size:
                return None
        elif block.size >= size + cfg.max_non_split_rounding_size:
            return None
        del keys[i]
        del blocks.items[i]
        return block

    def _should_split(self, block: Block, size: int, expandable_active: bool) -> bool:
        """`should_split`: small pool or expandable: remainder >= 512 B; large: > 1 MiB, size < max_split."""
        remaining = block.size - size
        if block.pool.is_small or expandable_active:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self.config.max_split_size and remaining > K_SMALL_SIZE

    def _alloc_found_block(self, block: Block, size: int, stream: int, orig_size: int, split: bool) -> Block:
        """`alloc_found_block`: split off the remainder if asked, mark allocated, count the stats."""
        pool = block.pool
        small = pool.is_small
        already_split = block.prev is not None or block.next is not None
        counted = self._splits_counted and block.expandable is None
        if split:
            remaining = block
            before = remaining.prev
            block = Block(
                stream, size, remaining.ptr, pool, 0, False, True, before, remaining, remaining.expandable
            )
            if before is not None:  # `block.splice(before, remaining)`, inlined
                before.next = block
            remaining.prev = block
            remaining.ptr += size
            remaining.size -= size
            remaining.gc_count_base = pool.get_free_blocks_call_count  # `insert_into_blocks`, inlined
            pool.blocks.insert(remaining)
            if counted and already_split:
                self.stats.split_change(small, 0, -size)
            elif counted:
                self.stats.split_change(small, 1, remaining.size)
        elif already_split and counted:
            self.stats.split_change(small, -1, -block.size)
        block.allocated = True
        block.requested_size = orig_size
        self.active[block.ptr] = block
        self.stats.allocated(small, block.size, orig_size)  # allocation, allocated, active, requested
        if block.size >= self.config.max_split_size:
            self.stats.oversize_allocations.increase(1)
        return block

    def _device_malloc(self, size: int) -> int | None:
        """cudaMalloc: None when the device has no `size` bytes left; else an address."""
        if self.capacity_bytes is not None and self.total_allocated_memory + size > self.capacity_bytes:
            return None
        if self.address_source is not None:
            return self.address_source(size)
        ptr = self._next_address
        self._next_address += (size + (2 << 20) - 1) // (2 << 20) * (2 << 20)
        return ptr

    def _alloc_block(self, p: AllocParams, is_retry: bool) -> bool:
        """`alloc_block`: a new segment of `alloc_size` (or expandable pages), within the allowed maximum."""
        if is_retry:
            self.stats.counters["num_alloc_retries"] += 1
        size = p.alloc_size
        allowed = self.allowed_memory_maximum
        if allowed is not None and self.total_allocated_memory + size > allowed:
            return False
        if p.expandable_active:
            p.block = self._try_allocate_expandable_block(p.stream, p.pool, p.size)
            return p.block is not None
        ptr = self._device_malloc(size)
        if ptr is None:
            return False
        self.total_allocated_memory += size
        p.block = Block(p.stream, size, ptr, p.pool)
        self.stats.change("segment", p.pool.is_small, 1)
        self.stats.change("reserved_bytes", p.pool.is_small, size)
        if size >= self.config.max_split_size:
            self.stats.oversize_segments.increase(1)
        self.stats.counters["num_device_alloc"] += 1
        self.segment_events.append(("segment_alloc", ptr, size))
        return True

    # ---- free internals ---------------------------------------------------------------------------
    def _free_block(self, block: Block) -> None:
        """`free_block`: merge with free neighbours, back into the pool, inactive-split stats."""
        pool, small = block.pool, block.pool.is_small
        original_size, requested = block.size, block.requested_size
        net_blocks = net_size = 0
        for candidate in (block.prev, block.next):
            if candidate is None or candidate.allocated:
                continue  # nothing to merge (`try_merge_blocks`' first test, ahead of the call)
            subsumed = self._try_merge_blocks(block, candidate, pool)
            if subsumed > 0:
                net_blocks -= 1
                net_size -= subsumed
        block.gc_count_base = pool.get_free_blocks_call_count  # `insert_into_blocks`, inlined
        pool.blocks.insert(block)
        if block.prev is not None or block.next is not None:  # `is_split`
            net_blocks += 1
            net_size += block.size
        if self._splits_counted and block.expandable is None and (net_blocks or net_size):
            self.stats.split_change(small, net_blocks, net_size)
        self.stats.released(small, original_size, requested)  # active, active_bytes, requested_bytes

    def _try_merge_blocks(self, dst: Block, src: Block | None, pool: BlockPool) -> int:
        """`try_merge_blocks`: absorb a free neighbour of the same mapping; its size, or 0."""
        if src is None or src.allocated or dst.mapped != src.mapped:
            return 0
        if dst.prev is src:
            dst.ptr = src.ptr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        (pool.blocks if src.mapped else pool.unmapped).remove(src)
        return src.size

    def _release_block(self, block: Block) -> None:
        """`release_block`: cudaFree a whole cached segment."""
        small = block.pool.is_small
        self.stats.counters["num_device_free"] += 1
        self.total_allocated_memory -= block.size
        self.stats.change("segment", small, -1)
        self.stats.change("reserved_bytes", small, -block.size)
        if block.size >= self.config.max_split_size:
            self.stats.oversize_segments.decrease(1)
        block.pool.blocks.remove(block)
        self.segment_events.append(("segment_free", block.ptr, block.size))

    def _release_blocks(self, pool: BlockPool) -> None:
        """`release_blocks`: free every unsplit cached block; unmap free pages of expandable ones."""
        to_unmap: list[Block] = []
        for block in list(pool.blocks.items):
            if block.expandable is not None:
                to_unmap.append(block)
            elif block.prev is None and block.next is None:
                self._release_block(block)
        for block in to_unmap:
            self._unmap_block(block)
            if block.prev is None and block.next is None:
                self._release_expandable_segment(block)

    def _release_cached_blocks(self) -> bool:
        """`release_cached_blocks`: the large pool, then the small one."""
        self.stats.counters["num_sync_all_streams"] += 1
        self._release_blocks(self.large)
        self._release_blocks(self.small)
        return True

    def _release_available_cached_blocks(self, p: AllocParams) -> bool:
        """`release_available_cached_blocks`: free oversize blocks, just enough for the request."""
        max_split = self.config.max_split_size
        if max_split == SIZE_MAX:
            return False
        blocks = p.pool.blocks
        items = blocks.items
        key_size = max_split if p.size < max_split else p.size
        i = blocks.lower_bound((p.stream, key_size, 0))
        if i < len(items) and items[i].stream == p.stream and items[i].expandable is None:
            self._release_block(items[i])
            return True
        if i == 0:
            return False
        released, i = 0, i - 1
        while released < key_size and items[i].size >= max_split and items[i].stream == p.stream:
            current, is_first = items[i], i == 0
            if not is_first:
                i -= 1
            if current.expandable is None:
                released += current.size
                self._release_block(current)
            if is_first:
                break
        return released >= key_size

    def _garbage_collect_cached_blocks(self) -> None:
        """`garbage_collect_cached_blocks`: free unsplit large blocks older than the average age."""
        assert self.allowed_memory_maximum is not None
        threshold = int(self.config.garbage_collection_threshold * self.allowed_memory_maximum)
        if self.total_allocated_memory <= threshold:
            return
        target, reclaimed, large = self.total_allocated_memory - threshold, 0, self.large
        ages = [large.gc_count(b) for b in large.blocks.items if not b.is_split()]
        total_age, count, freed = sum(ages), len(ages), True
        while reclaimed < target and freed and count > 0:
            age_threshold = total_age / count
            freed = False
            for block in list(large.blocks.items):
                age = large.gc_count(block)
                if not block.is_split() and block.expandable is None and age >= age_threshold:
                    freed = True
                    reclaimed += block.size
                    total_age -= age
                    count -= 1
                    self._release_block(block)

    # ---- snapshot ---------------------------------------------------------------------------------
    def segments(self) -> list[dict[str, Any]]:
        """`snapshot()` as `torch.cuda.memory._snapshot()['segments']` writes it, sorted by address."""
        heads = [b for b in self._all_blocks() if b.mapped and (b.prev is None or not b.prev.mapped)]
        return sorted((self._segment_info(h) for h in heads), key=lambda s: int(s["address"]))

    def _all_blocks(self) -> list[Block]:
        return [*self.small.blocks.items, *self.large.blocks.items, *self.active.values()]

    def _segment_info(self, head: Block) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = []
        total = allocated = requested = 0
        block: Block | None = head
        while block is not None and block.mapped:
            size = block.size
            total += size
            if block.allocated:
                allocated += size
                requested += block.requested_size
            state = "active_allocated" if block.allocated else "inactive"
            blocks.append(
                {"address": block.ptr, "size": size, "requested_size": block.requested_size, "state": state}
            )
            block = block.next
        return {
            "address": head.ptr,
            "total_size": total,
            "stream": head.stream,
            "segment_type": "small" if head.pool.is_small else "large",
            "allocated_size": allocated,
            "active_size": allocated,
            "requested_size": requested,
            "is_expandable": head.expandable is not None,
            "blocks": blocks,
        }
