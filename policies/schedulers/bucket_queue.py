"""The waiting queue of length-grouped batching: arrival order, indexed by length bucket.

A waiting request's bucket does not change while it waits (it makes no tokens, and it is
re-predicted only when cut from a batch, before it is queued again), so each bucket keeps
its own list in queue order. The queue order is arrival time, ties in insertion order;
a request put back after a cut goes after every queued request that arrived no later.
Choosing a batch then touches only the buckets involved, not the whole queue.
"""
from __future__ import annotations

import bisect
import heapq
import itertools


class BucketQueue:
    def __init__(self):
        self._lists: dict[int, list[tuple[float, int, int]]] = {}  # bucket -> [(arrival, seq, rid)]
        self._where: dict[int, tuple[int, tuple[float, int, int]]] = {}  # rid -> (bucket, entry)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._where)

    def add(self, rid: int, bucket: int, arrival_s: float) -> None:
        entry = (arrival_s, next(self._seq), rid)
        bisect.insort(self._lists.setdefault(bucket, []), entry)
        self._where[rid] = (bucket, entry)

    def remove(self, rid: int) -> None:
        bucket, entry = self._where.pop(rid)
        lst = self._lists[bucket]
        del lst[bisect.bisect_left(lst, entry)]
        if not lst:
            del self._lists[bucket]

    def head(self) -> int:
        """The request first in queue order."""
        return min(lst[0] for lst in self._lists.values())[2]

    def first(self, bucket: int, n: int) -> list[int]:
        """Up to ``n`` requests of ``bucket``, in queue order."""
        return [e[2] for e in self._lists.get(bucket, ())[:n]]

    def first_below(self, bucket: int, n: int, lowest: int = 0) -> list[int]:
        """Up to ``n`` requests of buckets ``lowest <= b < bucket``, in queue order."""
        lists = [lst for b, lst in self._lists.items() if lowest <= b < bucket]
        return [e[2] for e in itertools.islice(heapq.merge(*lists), n)]
