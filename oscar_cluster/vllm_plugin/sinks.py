"""Rows of the bf16 attention-sink pool, keyed by a sequence's first KV block.

The first `codec.sinks` positions of every sequence stay in bf16 (DESIGN.md section 3). A packed
slot is far smaller than a bf16 token, so they cannot live in the pages; vLLM gives a backend no
per-request storage either. What identifies a sequence's sinks for as long as they are valid is
the physical id of its first block (positions 0..block_size-1): it is fixed while the request
runs, shared exactly by requests that hit the same cached prefix block, and rewritten from
position 0 whenever the block is reused for a new first block.

`SinkRows` maps first-block ids to rows of per-layer buffers [rows, sinks, kv_heads, d] bf16.
A row is (re)assigned only when a sequence writes position 0, so a row always holds positions
0..k in order. Rows are recycled least recently used, never one that the current step reads or
writes. A sequence without a row (every row busy when it started, its row recycled since, or a
prefix-cache hit on a block whose row is gone) has its sinks read from their packed codes
instead (`fallbacks` counts them; the backend logs it once).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["SinkRows"]


class SinkRows:
    def __init__(self, rows: int):
        if rows < 1:
            raise ValueError(f"rows must be positive, got {rows}")
        self.rows = int(rows)
        self._row_of: OrderedDict[int, int] = OrderedDict()  # first block id -> row, least recent first
        self._free = list(range(self.rows - 1, -1, -1))
        self.evictions = 0
        self.fallbacks = 0

    def lookup(self, block: int) -> int | None:
        """The row of `block`'s sinks (marked recently used), or None."""
        row = self._row_of.get(block)
        if row is not None:
            self._row_of.move_to_end(block)
        return row

    def start(self, block: int, busy: set[int] = frozenset()) -> int | None:
        """A row for a sequence that writes position 0 into first block `block`: its old row, a
        free one, or the least recently used one not in `busy` (rows read or written this step);
        None if every row is busy (the sequence's sinks are then read from their codes)."""
        row = self._row_of.pop(block, None)
        if row is None and self._free:
            row = self._free.pop()
        if row is None:
            victim = next((b for b, r in self._row_of.items() if r not in busy), None)
            if victim is None:
                return None
            row = self._row_of.pop(victim)
            self.evictions += 1
        self._row_of[block] = row
        return row

    def __len__(self) -> int:
        return len(self._row_of)
