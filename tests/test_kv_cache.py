import pytest
from hypothesis import given, settings, strategies as st

from policies.kv_cache import KVCache, KVCacheFull


def test_allocate_free_and_capacity():
    kv = KVCache(num_blocks=10, block_size=16)
    assert kv.allocate(1, 16) and kv.used_blocks == 1
    assert kv.allocate(2, 17) and kv.used_blocks == 3
    assert not kv.allocate(3, 16 * 8)  # 8 blocks needed, 7 free
    assert kv.used_blocks == 3 and not kv.holds(3)
    assert kv.free(2) == 2 and kv.used_blocks == 1
    with pytest.raises(ValueError):
        kv.allocate(1, 1)


def test_append_grows_lazily_and_refuses_overflow():
    kv = KVCache(num_blocks=3, block_size=4)
    kv.allocate(0, 3)
    kv.allocate(1, 4)
    slots = kv.slots([0, 1])
    kv.append(slots, 1)  # 0: 4 tokens (1 block), 1: 5 tokens (2 blocks)
    assert kv.used_blocks == 3
    with pytest.raises(KVCacheFull):
        kv.append(slots, 1)
    assert kv.used_blocks == 3 and kv.tokens_of(0) == 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=30), st.integers(1, 64), st.integers(1, 40),
       st.integers(0, 500))
def test_max_decode_steps_is_exact(tokens, block_size, spare, limit):
    need = sum(-(-t // block_size) for t in tokens)
    kv = KVCache(num_blocks=need + spare, block_size=block_size)
    for i, t in enumerate(tokens):
        assert kv.allocate(i, t)
    slots = kv.slots(list(range(len(tokens))))
    s = kv.max_decode_steps(slots, limit)
    fits = lambda k: sum(-(-(t + k) // block_size) for t in tokens) <= kv.num_blocks
    assert 0 <= s <= limit and fits(s)
    assert s == limit or not fits(s + 1)
    kv.append(slots, s)  # must not raise
    assert kv.used_blocks <= kv.num_blocks
    assert kv.growth_blocks(slots, 1) == sum(-(-(t + s + 1) // block_size) - (-(-(t + s) // block_size)) for t in tokens)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "grow"]), st.integers(0, 9), st.integers(1, 50)), max_size=80))
def test_used_blocks_matches_contents_and_never_exceeds_capacity(ops):
    kv = KVCache(num_blocks=12, block_size=8)
    held = {}
    for op, rid, n in ops:
        if op == "alloc" and rid not in held:
            if kv.allocate(rid, n):
                held[rid] = n
        elif op == "free" and rid in held:
            kv.free(rid)
            del held[rid]
        elif op == "grow" and rid in held:
            if kv.grow(rid, n):
                held[rid] += n
        assert kv.used_blocks == sum(-(-t // 8) for t in held.values()) <= kv.num_blocks
        assert kv.peak_blocks <= kv.num_blocks


def test_unknown_requests_are_named():
    kv = KVCache(num_blocks=4, block_size=4)
    kv.allocate(1, 3)
    kv.free(1)
    for call in (lambda: kv.free(1), lambda: kv.tokens_of(7), lambda: kv.grow(7, 1), lambda: kv.slots((1,))):
        with pytest.raises(KeyError, match="request [17] holds no KV blocks"):
            call()


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.sampled_from(["alloc", "free", "grow", "append", "query", "batch"]),
                                             st.integers(0, 11), st.integers(1, 40)), max_size=120))
def test_incremental_decode_batch_matches_recounting(block_size, ops):
    """The decode group's O(1) aggregates equal a recount over the per-request tokens, whatever the
    sequence of allocations, frees, chunk growths and batch changes (including a repeated slot)."""
    kv = KVCache(num_blocks=60, block_size=block_size)
    held: dict[int, int] = {}
    batch: tuple = ()
    blocks = lambda t: -(-t // block_size)
    for op, rid, n in ops:
        if op == "alloc" and rid not in held and kv.allocate(rid, n):
            held[rid] = n
        elif op == "free" and rid in held:
            kv.free(rid)
            del held[rid]
            batch = tuple(r for r in batch if r != rid)
        elif op == "grow" and rid in held and kv.grow(rid, n):
            held[rid] += n
        elif op == "batch":  # a new decode batch: a few held requests, sometimes one twice
            ids = sorted(held)[rid % 3: rid % 3 + n % 6]
            batch = tuple(ids + ids[:1]) if n % 7 == 0 else tuple(ids)
        elif op in ("append", "query") and batch:
            slots = kv.slots(batch)
            uniq = set(batch)
            assert kv.sum_tokens(slots) == sum(held[r] for r in batch)
            k = n % 20
            assert kv.growth_blocks(slots, k) == sum(blocks(held[r] + k) - blocks(held[r]) for r in batch)
            s = kv.max_decode_steps(slots, n)
            fits = lambda m: sum(blocks(held[r] + m) for r in batch) - sum(blocks(held[r]) for r in batch) <= kv.free_blocks
            assert fits(s) and (s == n or not fits(s + 1))
            if op == "append" and s > 0 and len(uniq) == len(batch):
                kv.append(slots, s)
                for r in batch:
                    held[r] += s
        assert kv.used_blocks == sum(blocks(t) for t in held.values()) <= kv.num_blocks
        assert all(kv.tokens_of(r) == t for r, t in held.items())
    assert all(int(kv._tokens[kv.slots((r,))][0]) == t for r, t in held.items())
