"""The QoS frontier page: labels that do not print over each other."""


def test_frontier_labels_skip_a_point_on_top_of_a_labelled_one():
    from syncintellects.frontier import _sparse_labels
    pts = [{"label": "a", "mean_qos": 0.80, "mean_e2e_s": 20.0}, {"label": "b", "mean_qos": 0.801, "mean_e2e_s": 20.1},
           {"label": "c", "mean_qos": 0.90, "mean_e2e_s": 30.0}, {"label": "d", "mean_qos": 1.00, "mean_e2e_s": 40.0}]
    assert _sparse_labels(pts, pts) == ["a", "", "c", "d"]
    assert _sparse_labels(pts, pts, gap=0.0) == ["a", "b", "c", "d"]
