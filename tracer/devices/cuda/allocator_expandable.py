"""Expandable segments (`expandable_segments:True`) of the CUDA caching allocator model.

Ported from `c10/cuda/CUDACachingAllocator.cpp` (PyTorch 2.13): `ExpandableSegment::map` / `unmap`
(pages of 2 MiB for the small pool, `large_segment_size` (20 MiB) for the large pool, address space for
9/8 of the device), `find_expandable_block`, `map_block`, `try_allocate_expandable_block`,
`unmap_block`, `release_expandable_segment`, and the best-fit adjustment of `get_free_block` that ranks
an expandable block by the size it can grow to. Reserved bytes grow and shrink by whole pages.

Left out: peer access, IPC sharing, the handle types; mapping fails only against the model's capacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .allocator_blocks import Block, BlockPool, DeviceStats, ExpandableSegment
from .allocator_config import K_SMALL_BUFFER, AllocatorConfig

if TYPE_CHECKING:
    from .allocator_core import AllocParams

_VA_START = 0x600000000000  # where the model reserves expandable address ranges
_DEFAULT_DEVICE_BYTES = 80 * 2**30  # address space sizing when no capacity is given


def _allocatable(block: Block | None) -> bool:
    return block is not None and not block.allocated


def _expandable_size(block: Block) -> int:
    nxt = block.next
    return block.size + (nxt.size if nxt is not None and not nxt.mapped else 0)


class ExpandableMixin:
    """The expandable-segment half of `DeviceCachingAllocator`; mixed into `CachingAllocator`."""

    config: AllocatorConfig
    capacity_bytes: int | None
    stats: DeviceStats
    total_allocated_memory: int
    expandable_segments: list[ExpandableSegment]

    def _init_expandable(self) -> None:
        self.expandable_segments = []
        self._next_va = _VA_START

    def _try_merge_blocks(self, dst: Block, src: Block | None, pool: BlockPool) -> int:
        raise NotImplementedError

    def _expandable_best_fit(self, items: list[Block], i: int, p: AllocParams) -> int:
        """`get_free_block`'s expandable branch: the index to take, or -1 when none fits."""
        if p.expandable_active:
            j = i + 1
            while (
                items[i].expandable is not None
                and j < len(items)
                and items[j].stream == p.stream
                and _expandable_size(items[j]) < _expandable_size(items[i])
            ):
                i, j = j, j + 1
            return i
        i += 1  # expandable segments were turned off: only non-expandable blocks
        while i < len(items) and items[i].expandable is not None and items[i].stream == p.stream:
            i += 1
        return -1 if i == len(items) or items[i].stream != p.stream else i

    def _find_expandable_block(self, stream: int, pool: BlockPool, size: int) -> Block:
        """`find_expandable_block`: the lowest free+unmapped range of `size` bytes, or a new segment."""
        unmapped = pool.unmapped
        i = unmapped.lower_bound((stream, 0))
        while i < len(unmapped) and unmapped.items[i].stream == stream:
            candidate: Block = unmapped.items[i]
            if _allocatable(candidate.prev):
                assert candidate.prev is not None
                candidate = candidate.prev
            if self._has_address_space(candidate, size):
                return candidate
            i += 1
        page = K_SMALL_BUFFER if pool.is_small else self.config.large_segment_size
        device = self.capacity_bytes or _DEFAULT_DEVICE_BYTES
        max_pages = -(-(device + device // 8) // page)
        segment = ExpandableSegment(self._next_va, page, max_pages, stream)
        self._next_va += segment.size + page
        self.expandable_segments.append(segment)
        block = Block(stream, segment.size, segment.base, pool, mapped=False, expandable=segment)
        pool.unmapped.insert(block)
        return block

    @staticmethod
    def _has_address_space(block: Block | None, size: int) -> bool:
        total = 0
        while total < size and block is not None and _allocatable(block):
            total += block.size
            block = block.next
        return total >= size

    def _map_block(self, to_map: Block, size: int) -> bool:
        """`map_block` + `ExpandableSegment::map`: back [ptr, ptr+size) with whole pages, merge, count."""
        segment, pool = to_map.expandable, to_map.pool
        assert segment is not None and not to_map.mapped
        begin = (to_map.ptr - segment.base) // segment.page_size
        end = -(-(to_map.ptr + size - segment.base) // segment.page_size)
        mapped = (end - begin) * segment.page_size
        cap = self.capacity_bytes
        if cap is not None and self.total_allocated_memory + mapped > cap:
            return False
        segment.mapped.update(range(begin, end))
        pool.unmapped.remove(to_map)
        to_map.mapped = True
        if mapped < to_map.size:
            rest = Block(to_map.stream, to_map.size - mapped, to_map.ptr + mapped, pool, mapped=False)
            rest.expandable = segment
            rest.splice(to_map, to_map.next)
            pool.unmapped.insert(rest)
            to_map.size = mapped
        self._try_merge_blocks(to_map, to_map.prev, pool)
        self._try_merge_blocks(to_map, to_map.next, pool)
        pool.insert_into_blocks(to_map)
        self.total_allocated_memory += mapped
        self.stats.change("reserved_bytes", pool.is_small, mapped)
        self.stats.counters["num_device_alloc"] += 1
        return True

    def _try_allocate_expandable_block(self, stream: int, pool: BlockPool, size: int) -> Block | None:
        """`try_allocate_expandable_block`: map pages until the candidate holds `size` bytes."""
        candidate = self._find_expandable_block(stream, pool, size)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            nxt = candidate.next
            assert nxt is not None
            if not self._map_block(nxt, min(size - candidate.size, nxt.size)):
                return None
            candidate = nxt
        pool.blocks.remove(candidate)
        return candidate

    def _unmap_block(self, block: Block) -> None:
        """`unmap_block` + `ExpandableSegment::unmap`: return the whole free pages inside a cached block."""
        segment, pool = block.expandable, block.pool
        assert segment is not None
        page = segment.page_size
        begin = -(-(block.ptr - segment.base) // page)
        end = (block.ptr + block.size - segment.base) // page
        if begin >= end:
            return
        pool.blocks.remove(block)
        ptr, size = segment.base + begin * page, (end - begin) * page
        segment.mapped.difference_update(range(begin, end))
        before, after = ptr - block.ptr, block.size - (ptr - block.ptr) - size
        if before > 0:
            head = Block(block.stream, before, block.ptr, pool, expandable=segment)
            head.splice(block.prev, block)
            pool.insert_into_blocks(head)
        if after > 0:
            tail = Block(block.stream, after, ptr + size, pool, expandable=segment)
            tail.splice(block, block.next)
            pool.insert_into_blocks(tail)
        block.ptr, block.size, block.mapped = ptr, size, False
        self._try_merge_blocks(block, block.prev, pool)
        self._try_merge_blocks(block, block.next, pool)
        pool.unmapped.insert(block)
        self.total_allocated_memory -= size
        self.stats.change("reserved_bytes", pool.is_small, -size)
        self.stats.counters["num_device_free"] += 1

    def _release_expandable_segment(self, block: Block) -> None:
        """`release_expandable_segment`: drop a segment whose pages are all unmapped."""
        assert block.expandable is not None and not block.mapped
        block.pool.unmapped.remove(block)
        self.expandable_segments.remove(block.expandable)
