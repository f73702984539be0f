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

The decode batch's aggregates are kept incrementally (:class:`_Group`): the batch a policy
queries and the executor grows is nearly the same from one step to the next (a request
joins, one finishes), so its total context and the histogram of free positions in its
last blocks are updated per member that joins or leaves instead of being recomputed over
the whole batch; :meth:`growth_blocks`, :meth:`max_decode_steps` and :meth:`sum_tokens`
then cost O(block_size), not O(batch).
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
        self._slots_key: object = None
        self._slots_val = np.empty(0, dtype=np.int64)
        self._group = _Group(self.block_size)

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
        return int(self._tokens[self._slot_of(request_id)])

    def __len__(self) -> int:
        return len(self._slot)

    def slots(self, request_ids: tuple) -> np.ndarray:
        """Slot indices of the given requests (for vectorised :meth:`append`).

        Policies keep one tuple object per batch composition; asking twice for the same tuple
        object (policy, then executor) reuses the answer. Slots never move while held."""
        if request_ids is self._slots_key:
            return self._slots_val
        slot = self._slot
        try:
            out = np.fromiter((slot[r] for r in request_ids), dtype=np.int64, count=len(request_ids))
        except KeyError as e:
            raise self._missing(e.args[0]) from None
        self._slots_key, self._slots_val = request_ids, out
        return out

    def sum_tokens(self, slots: np.ndarray) -> int:
        """Total tokens held by ``slots`` (the attention context of a decode batch)."""
        g = self._track(slots)
        if g is None:
            return int(self._tokens[slots].sum())
        return g.total

    def _last_block_room(self, slots: np.ndarray) -> np.ndarray:
        """Histogram over the requests of free token positions left in their last block (0..bs-1)."""
        return np.bincount((-self._tokens[slots]) % self.block_size, minlength=self.block_size)

    def growth_blocks(self, slots: np.ndarray, steps: int) -> int:
        """Blocks that growing every slot by ``steps`` tokens would add."""
        if steps <= 0 or len(slots) == 0:
            return 0
        g = self._track(slots)
        q, r = divmod(steps, self.block_size)
        if g is not None:
            return len(slots) * q + g.room_below(r)
        if steps == 1:  # the hot case: rows whose last block is exactly full
            return int(np.count_nonzero(self._tokens[slots] % self.block_size == 0))
        room = self._last_block_room(slots)
        return len(slots) * q + int(room[:r].sum())

    def max_decode_steps(self, slots: np.ndarray, limit: int) -> int:
        """Largest ``s <= limit`` such that growing every slot by ``s`` tokens still fits.

        A request with ``f`` free positions in its last block needs ``ceil(max(s - f, 0) / bs)``
        new blocks for ``s`` more tokens. Writing ``s = q * bs + r`` (0 <= r < bs), that is
        ``q + [f < r]``, so the whole batch needs ``B * q + #{f < r}``: the largest fitting
        ``s`` follows from ``q = free // B`` and a cumulative histogram of ``f``, no search.
        """
        b = len(slots)
        if limit <= 0 or b == 0:
            return max(limit, 0)
        bs = self.block_size
        free = self.num_blocks - self.used_blocks
        if b * (-(-(limit + bs - 1) // bs)) <= free:  # even the worst phase alignment fits
            return limit
        q, spare = divmod(free, b)
        g = self._track(slots)
        if g is not None:
            r = g.largest_r(spare)
        else:
            below = np.cumsum(self._last_block_room(slots))  # below[r - 1] = #{f < r}
            r = int(np.searchsorted(below[:-1], spare, side="right"))  # largest r in [0, bs-1] with #{f < r} <= spare
        return min(limit, q * bs + r)

    def _track(self, slots: np.ndarray) -> "_Group | None":
        """The incremental aggregates of ``slots``, retargeted from the previous batch (None: has duplicates)."""
        g = self._group
        if slots is g.key:
            return g
        return g if g.retarget(slots, self._tokens) else None

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
        slot = self._slot_of(request_id)
        del self._slot[request_id]
        self._slots_key = None
        self._group.drop(slot, int(self._tokens[slot]))
        blocks = self.blocks_for(int(self._tokens[slot]))
        self._tokens[slot] = 0
        self._free_slots.append(slot)
        self.used_blocks -= blocks
        return blocks

    def append(self, slots: np.ndarray, n: int) -> None:
        """Grow every request in ``slots`` by ``n`` tokens (n decode steps)."""
        if n <= 0 or len(slots) == 0:
            return
        g = self._track(slots)
        if g is not None:
            delta = self.growth_blocks(slots, n)
        else:
            bs = self.block_size
            before = self._tokens[slots]
            delta = int((-(-(before + n) // bs)).sum() - (-(-before // bs)).sum())
        if self.used_blocks + delta > self.num_blocks:
            raise KVCacheFull(
                f"growing {len(slots)} requests by {n} tokens needs {delta} more blocks, "
                f"only {self.free_blocks} free of {self.num_blocks}"
            )
        self._tokens[slots] += n
        if g is not None:
            g.advance(n)
        self.used_blocks += delta
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks

    def grow(self, request_id: int, tokens: int) -> bool:
        """Grow one request by ``tokens`` tokens (e.g. a prefill chunk); False if full."""
        slot = self._slot_of(request_id)
        before = int(self._tokens[slot])
        delta = self.blocks_for(before + tokens) - self.blocks_for(before)
        if delta > self.free_blocks:
            return False
        self._group.regrow(slot, before, before + tokens)
        self._tokens[slot] = before + tokens
        self.used_blocks += delta
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        return True

    def _slot_of(self, request_id: int) -> int:
        try:
            return self._slot[request_id]
        except KeyError:
            raise self._missing(request_id) from None

    @staticmethod
    def _missing(request_id) -> KeyError:
        return KeyError(f"request {request_id} holds no KV blocks (never allocated, or already freed)")

    def _grow_slots(self) -> None:
        old = len(self._tokens)
        self._tokens = np.concatenate([self._tokens, np.zeros(old, dtype=np.int64)])
        self._free_slots.extend(range(2 * old - 1, old - 1, -1))


class _Group:
    """Aggregates of one batch of slots that grows in lockstep (the decode batch).

    ``total`` is the batch's token sum; ``hist[k]`` counts members whose token count is
    ``k + clock`` modulo the block size, where ``clock`` is the tokens appended to the whole
    batch so far (so appending shifts every member's residue by moving ``clock``, not the
    histogram). A different batch is reached by letting members leave and join.
    """

    __slots__ = ("bs", "key", "members", "total", "hist", "clock")

    def __init__(self, block_size: int):
        self.bs = block_size
        self.key: object = None
        self.members: set[int] = set()
        self.total = 0
        self.hist = [0] * block_size
        self.clock = 0

    def retarget(self, slots: np.ndarray, tokens: np.ndarray) -> bool:
        want = slots.tolist()
        new = set(want)
        if len(new) != len(want):
            self.key = None
            return False
        old = self.members
        bs, clock, hist = self.bs, self.clock, self.hist
        for s in old - new:
            t = int(tokens[s])
            self.total -= t
            hist[(t - clock) % bs] -= 1
        for s in new - old:
            t = int(tokens[s])
            self.total += t
            hist[(t - clock) % bs] += 1
        self.members = new
        self.key = slots
        return True

    def advance(self, n: int) -> None:
        self.total += n * len(self.members)
        self.clock += n

    def drop(self, slot: int, tokens: int) -> None:
        if slot in self.members:
            self.members.discard(slot)
            self.total -= tokens
            self.hist[(tokens - self.clock) % self.bs] -= 1
            self.key = None

    def regrow(self, slot: int, before: int, after: int) -> None:
        if slot in self.members:
            self.total += after - before
            self.hist[(before - self.clock) % self.bs] -= 1
            self.hist[(after - self.clock) % self.bs] += 1

    def room_below(self, r: int) -> int:
        """#{members with f < r free positions in their last block}: f = (-tokens) mod bs."""
        bs, c, h = self.bs, self.clock, self.hist
        return sum(h[(-f - c) % bs] for f in range(r))

    def largest_r(self, spare: int) -> int:
        """Largest r in [0, bs-1] with #{f < r} <= spare."""
        bs, c, h = self.bs, self.clock, self.hist
        below = 0
        for f in range(bs - 1):
            below += h[(-f - c) % bs]
            if below > spare:
                return f
        return bs - 1
