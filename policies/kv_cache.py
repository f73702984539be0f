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

The decode batch is kept as a :class:`~policies.kv_group.DecodeGroup`: the batch a policy
queries and the executor grows is nearly the same from one step to the next (a request
joins, one finishes), so its aggregates are updated per member that joins or leaves and
:meth:`append`, :meth:`growth_blocks`, :meth:`max_decode_steps` and :meth:`sum_tokens`
cost O(block_size), not O(batch). The group's members' counts live in the group; the
per-slot array is brought up to date when read as a whole (``_tokens``).
"""
from __future__ import annotations

import numpy as np

from policies.kv_group import DecodeGroup


class KVCacheFull(RuntimeError):
    """A plan asked for more KV blocks than the cache holds."""


class KVCache:
    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = int(num_blocks)
        self.block_size = int(block_size)
        self._slot: dict[int, int] = {}
        self._tok = np.zeros(min(self.num_blocks, 1 << 16), dtype=np.int64)  # stale for the group's members
        self._free_slots: list[int] = list(range(len(self._tok) - 1, -1, -1))
        self.used_blocks = 0
        self.peak_blocks = 0
        self._slots_key: object = None
        self._slots_val = np.empty(0, dtype=np.int64)
        self._slots_list: list[int] = []
        self._group = DecodeGroup(self.block_size)

    # -- queries -----------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self.used_blocks

    @property
    def _tokens(self) -> np.ndarray:
        """Tokens per slot, up to date (for whole-array reads)."""
        g, tok = self._group, self._tok
        for s, k in g.members.items():
            tok[s] = k + g.clock
        return tok

    def blocks_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.block_size)

    def can_allocate(self, tokens: int) -> bool:
        return self.blocks_for(tokens) <= self.free_blocks

    def holds(self, request_id: int) -> bool:
        return request_id in self._slot

    def tokens_of(self, request_id: int) -> int:
        return self._tokens_at(self._slot_of(request_id))

    def _tokens_at(self, slot: int) -> int:
        g = self._group
        k = g.members.get(slot)
        return int(self._tok[slot]) if k is None else k + g.clock

    def __len__(self) -> int:
        return len(self._slot)

    def slots(self, request_ids: tuple) -> np.ndarray:
        """Slot indices of the given requests (for vectorised :meth:`append`).

        Policies keep one tuple object per batch composition; asking twice for the same tuple
        object (policy, then executor) reuses the answer. Slots never move while held."""
        if request_ids is self._slots_key:
            return self._slots_val
        try:
            as_list = list(map(self._slot.__getitem__, request_ids))
        except KeyError as e:
            raise self._missing(e.args[0]) from None
        out = np.array(as_list, dtype=np.int64)
        self._slots_key, self._slots_val, self._slots_list = request_ids, out, as_list
        return out

    def sum_tokens(self, slots: np.ndarray) -> int:
        """Total tokens held by ``slots`` (the attention context of a decode batch)."""
        g = self._group
        if slots is not g.key:
            g = self._track(slots)
        return int(self._tok[slots].sum()) if g is None else g.total

    def _last_block_room(self, slots: np.ndarray) -> np.ndarray:
        """Histogram over the requests of free token positions left in their last block (0..bs-1)."""
        return np.bincount((-self._tok[slots]) % self.block_size, minlength=self.block_size)

    def growth_blocks(self, slots: np.ndarray, steps: int) -> int:
        """Blocks that growing every slot by ``steps`` tokens would add."""
        g = self._group
        if slots is g.key and steps == 1:  # the hot case: members whose last block is exactly full
            return g.hist[-g.clock % self.block_size]
        if steps <= 0 or len(slots) == 0:
            return 0
        if slots is not g.key:
            g = self._track(slots)
        if g is not None and steps == 1:
            return g.hist[-g.clock % self.block_size]
        q, r = divmod(steps, self.block_size)
        if g is not None:
            return len(slots) * q + g.room_below(r)
        return len(slots) * q + int(self._last_block_room(slots)[:r].sum())

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
        g = self._group
        if slots is not g.key:
            g = self._track(slots)
        if g is not None:
            r = g.largest_r(spare)
        else:
            below = np.cumsum(self._last_block_room(slots))  # below[r - 1] = #{f < r}
            r = int(np.searchsorted(below[:-1], spare, side="right"))  # largest r in [0, bs-1] with #{f < r} <= spare
        return min(limit, q * bs + r)

    def _track(self, slots: np.ndarray) -> DecodeGroup | None:
        """The group, made to hold exactly ``slots`` (members leave and join); None if ``slots``
        repeats a slot, in which case the group is dissolved and the per-slot array is exact."""
        g = self._group
        if slots is g.key:
            return g
        want = self._slots_list if slots is self._slots_val else slots.tolist()
        members = g.members
        prev = g.key_list
        if prev is not None and len(want) > len(prev) and want[:len(prev)] == prev:  # the batch plus newcomers
            tail = want[len(prev):]
            if not any(s in members for s in tail) and (len(tail) == 1 or len(set(tail)) == len(tail)):
                for s in tail:
                    g.join(s, int(self._tok[s]))
                g.key, g.key_list = slots, want
                return g
        new = set(want)
        if len(new) != len(want):
            for s in list(members):
                self._tok[s] = g.leave(s)
            g.key = g.key_list = None
            return None
        tok = self._tok
        for s in members.keys() - new:
            tok[s] = g.leave(s)
        for s in new - members.keys():
            g.join(s, int(tok[s]))
        g.key, g.key_list = slots, want
        return g

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
        self._tok[slot] = tokens
        self.used_blocks += blocks
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks
        return True

    def free(self, request_id: int) -> int:
        """Release a request's blocks; returns how many were freed."""
        slot = self._slot_of(request_id)
        del self._slot[request_id]
        self._slots_key = None
        held = self._group.leave(slot) if slot in self._group.members else int(self._tok[slot])
        blocks = self.blocks_for(held)
        self._tok[slot] = 0
        self._free_slots.append(slot)
        self.used_blocks -= blocks
        return blocks

    def append(self, slots: np.ndarray, n: int) -> None:
        """Grow every request in ``slots`` by ``n`` tokens (n decode steps)."""
        if n <= 0 or len(slots) == 0:
            return
        g = self._group
        if slots is not g.key:
            g = self._track(slots)
        if g is not None:
            q, r = divmod(n, self.block_size)
            delta = len(slots) * q + g.room_below(r)
        else:
            bs = self.block_size
            before = self._tok[slots]
            delta = int((-(-(before + n) // bs)).sum() - (-(-before // bs)).sum())
        if self.used_blocks + delta > self.num_blocks:
            raise KVCacheFull(
                f"growing {len(slots)} requests by {n} tokens needs {delta} more blocks, "
                f"only {self.free_blocks} free of {self.num_blocks}"
            )
        if g is not None:
            g.clock += n
        else:
            self._tok[slots] += n
        self.used_blocks += delta
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks

    def grow(self, request_id: int, tokens: int) -> bool:
        """Grow one request by ``tokens`` tokens (e.g. a prefill chunk); False if full."""
        slot = self._slot_of(request_id)
        before = self._tokens_at(slot)
        delta = self.blocks_for(before + tokens) - self.blocks_for(before)
        if delta > self.free_blocks:
            return False
        if slot in self._group.members:
            self._group.add(slot, tokens)
        else:
            self._tok[slot] = before + tokens
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
        old = len(self._tok)
        self._tok = np.concatenate([self._tok, np.zeros(old, dtype=np.int64)])
        self._free_slots.extend(range(2 * old - 1, old - 1, -1))
