"""The bucketed waiting queue against a plain list kept in arrival order (the naive model)."""
from hypothesis import given, settings, strategies as st

from policies.schedulers.bucket_queue import BucketQueue


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "query"]), st.integers(0, 30), st.integers(-1, 5),
                          st.integers(0, 8), st.integers(1, 6)), max_size=80))
def test_matches_a_list_in_arrival_order(ops):
    q, model = BucketQueue(), []  # model: [(rid, bucket, arrival)] in queue order
    for op, rid, bucket, arrival, n in ops:
        present = [m[0] for m in model]
        if op == "add" and rid not in present:
            q.add(rid, bucket, float(arrival))
            i = 0  # after every queued request that arrived no later
            while i < len(model) and model[i][2] <= arrival:
                i += 1
            model.insert(i, (rid, bucket, float(arrival)))
        elif op == "remove" and rid in present:
            q.remove(rid)
            model = [m for m in model if m[0] != rid]
        elif op == "query" and model:
            assert q.head() == model[0][0]
            assert q.first(bucket, n) == [m[0] for m in model if m[1] == bucket][:n]
            assert q.first_below(bucket, n) == [m[0] for m in model if 0 <= m[1] < bucket][:n]
        assert len(q) == len(model)
