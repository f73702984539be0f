"""Incremental aggregates of the decode batch, for :class:`policies.kv_cache.KVCache`.

A decode batch grows in lockstep (every member gains one token a step) and changes by a
member or two between plans (one joins after its prefill, one finishes). So instead of
per-member token counts, the group stores each member's ``key = tokens - clock``, where
``clock`` counts the tokens appended to the whole group: appending ``n`` steps is
``clock += n``, and the batch's total tokens and the histogram of ``tokens mod
block_size`` (which gives how many blocks the next steps need) are kept up to date per
member that joins or leaves. Every query is O(block_size), whatever the batch size.
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate


class DecodeGroup:
    __slots__ = ("bs", "key", "key_list", "members", "sumkey", "hist", "clock")

    def __init__(self, block_size: int):
        self.bs = block_size
        self.key: object = None              # the slots array this group was last matched to
        self.key_list: list[int] | None = None  # its slots as a list, while they are exactly the members
        self.members: dict[int, int] = {}    # slot -> tokens - clock
        self.sumkey = 0
        self.hist = [0] * block_size         # hist[k]: members with key % bs == k
        self.clock = 0

    @property
    def total(self) -> int:
        return self.sumkey + len(self.members) * self.clock

    def tokens(self, slot: int) -> int:
        return self.members[slot] + self.clock

    def join(self, slot: int, tokens: int) -> None:
        k = tokens - self.clock
        self.members[slot] = k
        self.sumkey += k
        self.hist[k % self.bs] += 1

    def leave(self, slot: int) -> int:
        """Remove a member; returns its tokens."""
        k = self.members.pop(slot)
        self.sumkey -= k
        self.hist[k % self.bs] -= 1
        self.key = self.key_list = None
        return k + self.clock

    def add(self, slot: int, tokens: int) -> None:
        """A member grows by ``tokens`` on its own (a prefill chunk)."""
        k = self.members[slot]
        self.hist[k % self.bs] -= 1
        self.hist[(k + tokens) % self.bs] += 1
        self.members[slot] = k + tokens
        self.sumkey += tokens

    def room_below(self, r: int) -> int:
        """#{members with f < r free positions in their last block}, f = (-tokens) mod bs, 0 <= r <= bs."""
        h = self.hist
        a = (-self.clock) % self.bs  # hist index of the members with f = 0; f = 1 is a - 1, ...
        lo = a - r + 1
        if lo >= 0:
            return sum(h[lo:a + 1])
        return sum(h[:a + 1]) + sum(h[lo:])

    def largest_r(self, spare: int) -> int:
        """Largest r in [0, bs-1] with #{f < r} <= spare."""
        h = self.hist
        a = (-self.clock) % self.bs
        by_f = h[a::-1] + h[:a:-1]  # members by free positions f = 0, 1, ..., bs-1
        return bisect_right(list(accumulate(by_f[:-1])), spare)
