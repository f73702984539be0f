"""The KV-cache accountant shared by both engines.

Memory is counted in fixed-size blocks of ``block_size`` tokens (as in vLLM's paged
attention). A request holding ``t`` tokens of context uses ``ceil(t / block_size)``
blocks. Blocks are allocated lazily as a request's context grows, so the only question
a policy must answer before a multi-step decode is how many steps fit
(:meth:`KVCache.max_decode_steps`).

The accountant never exceeds capacity: ``allocate`` returns ``False`` instead, and
``append`` raises, because a plan that overruns the cache is a policy bug.

Per-request token counts live in a numpy array indexed by a slot, so growing a whole
decode batch is one vectorised operation.
"""
from __future__ import annotations

import numpy as np


class KVCacheFull(RuntimeError):
    """A plan asked for more KV blocks than the cache holds."""


class KVCache:
    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = int(num_blocks)
        self.block_size = int(block_size)
        self._slot: dict[int, int] = {}
        self._tokens = np.zeros(min(self.num_blocks, 1 << 16), dtype=np.int64)
        self._free_slots: list[int] = list(range(len(self._tokens) - 1, -1, -1))
        self.used_blocks = 0
        self.peak_blocks = 0

    # -- queries -----------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self.used_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.block_size)

    def can_allocate(self, tokens: int) -> bool:
        return self.blocks_for(tokens) <= self.free_blocks

    def holds(self, request_id: int) -> bool:
        return request_id in self._slot

    def tokens_of(self, request_id: int) -> int:
        return int(self._tokens[self._slot[request_id]])

    def __len__(self) -> int:
        return len(self._slot)

    def slots(self, request_ids) -> np.ndarray:
        """Slot indices of the given requests (for vectorised :meth:`append`)."""
        slot = self._slot
        return np.fromiter((slot[r] for r in request_ids), dtype=np.int64, count=len(request_ids))

    def growth_blocks(self, slots: np.ndarray, steps: int) -> int:
        """Blocks that growing every slot by ``steps`` tokens would add."""
        if steps <= 0 or len(slots) == 0:
            return 0
        tokens = self._tokens[slots]
        return int((-(-(tokens + steps) // self.block_size)).sum() - (-(-tokens // self.block_size)).sum())

    def max_decode_steps(self, slots: np.ndarray, limit: int) -> int:
        """Largest ``s <= limit`` such that growing every slot by ``s`` tokens still fits.

        With ``f`` free token positions in a request's last block, ``s`` steps add
        ``ceil(max(s - f, 0) / block_size)`` blocks; a histogram of ``f`` (block_size bins)
        makes each evaluation O(block_size), and the answer lies within one block of
        ``free_blocks * block_size / B``, so the search is short.
        """
        b = len(slots)
        if limit <= 0 or b == 0:
            return max(limit, 0)
        bs = self.block_size
        free = self.num_blocks - self.used_blocks
        if b * (-(-(limit + bs - 1) // bs)) <= free:  # even the worst phase alignment fits
            return limit
        tokens = self._tokens[slots]
        hist = np.bincount((-tokens) % bs, minlength=bs)  # free positions in the last block
        f = np.arange(bs)

        def need(s: int) -> int:
            return int((hist * (-(-np.maximum(s - f, 0) // bs))).sum())

        lo = max(0, min(limit, free * bs // b - bs))
        while lo > 0 and need(lo) > free:
            lo = max(0, lo - bs)
        hi = min(limit, free * bs // b + bs + 1)
        if need(hi) <= free:
            return hi
        while hi - lo > 1:  # need(lo) fits, need(hi) does not
            mid = (lo + hi) // 2
            if need(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    # -- updates -----------------------------------------------------------------
    def allocate(self, request_id: int, tokens: int) -> bool:
        """Reserve blocks for a new request holding ``tokens`` tokens; False if full."""
        if request_id in self._slot:
            raise ValueError(f"request {request_id} already holds KV blocks")
        blocks = self.blocks_for(tokens)
        if blocks > self.free_blocks:
            return False
        if not self._free_slots:
            self._grow_slots()
        slot = self._free_slots.pop()
        self._slot[request_id] = slot
        self._tokens[slot] = tokens
        self.used_blocks += blocks
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        return True

    def free(self, request_id: int) -> int:
        """Release a request's blocks; returns how many were freed."""
        slot = self._slot.pop(request_id)
        blocks = self.blocks_for(int(self._tokens[slot]))
        self._tokens[slot] = 0
        self._free_slots.append(slot)
        self.used_blocks -= blocks
        return blocks

    def append(self, slots: np.ndarray, n: int) -> None:
        """Grow every request in ``slots`` by ``n`` tokens (n decode steps)."""
        if n <= 0 or len(slots) == 0:
            return
        bs = self.block_size
        before = self._tokens[slots]
        after = before + n
        delta = int((-(-after // bs)).sum() - (-(-before // bs)).sum())
        if self.used_blocks + delta > self.num_blocks:
            raise KVCacheFull(
                f"growing {len(slots)} requests by {n} tokens needs {delta} more blocks, "
                f"only {self.free_blocks} free of {self.num_blocks}"
            )
        self._tokens[slots] = after
        self.used_blocks += delta
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks

    def grow(self, request_id: int, tokens: int) -> bool:
        """Grow one request by ``tokens`` tokens (e.g. a prefill chunk); False if full."""
        slot = self._slot[request_id]
        before = int(self._tokens[slot])
        delta = self.blocks_for(before + tokens) - self.blocks_for(before)
        if delta > self.free_blocks:
            return False
        self._tokens[slot] = before + tokens
        self.used_blocks += delta
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        return True

    def _grow_slots(self) -> None:
        old = len(self._tokens)
        self._tokens = np.concatenate([self._tokens, np.zeros(old, dtype=np.int64)])
        self._free_slots.extend(range(2 * old - 1, old - 1, -1))
