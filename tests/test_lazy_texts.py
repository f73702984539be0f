"""The runner's answer-so-far texts are decoded when a predictor reads them (policies.contract.LazyTexts):
the same predictions and decisions as decoding every row after every step, far fewer decodes, and the
decoding time off the virtual clock."""
import pytest

from policies.contract import LazyTexts
from policies.schedulers.lengths import LengthTracker


def test_lazy_texts_decode_once_on_read_and_count_their_time():
    calls = []
    ticks = iter(range(100))
    spent = [0.0]
    texts = LazyTexts({1: lambda: calls.append(1) or "one", 2: lambda: calls.append(2) or "two"},
                      clock=lambda: float(next(ticks)), decode_s=spent)
    assert len(texts) == 2 and sorted(texts) == [1, 2] and calls == []
    assert texts[2] == "two" and texts[2] == "two" and calls == [2] and spent == [1.0]
    later = texts.deferred()
    assert calls == [2] and later[1]() == "one" and calls == [2, 1]
    with pytest.raises(KeyError):
        texts[3]


class _Counting:
    """A progressive predictor stub that records the text it is given at each re-prediction."""
    refresh_every = 4

    def __init__(self):
        self.seen = []

    def predict(self, view, generated, state):
        self.seen.append((view.request_id, generated, state))
        return generated + 10.0


def test_tracker_reads_a_lazy_text_only_when_it_predicts():
    from policies.contract import RequestView, StepPlan, StepResult

    pred = _Counting()
    t = LengthTracker(pred)
    t.add(RequestView(request_id=7, arrival_s=0.0, prompt_tokens=5, max_output_tokens=100))
    decoded = []
    for step in range(1, 9):
        src = {7: (lambda s=step: decoded.append(s) or f"text after {s}")}
        res = StepResult(start_s=0, end_s=1, num_steps=1, tokens=1, texts=LazyTexts(src))
        t.observe(StepPlan(decode=(7,)), res)
        t.refresh_due([7])
    # re-predicted at 4 and 8 generated tokens, each time with the text of that very step; nothing else decoded
    assert [(g, s) for _, g, s in pred.seen[1:]] == [(4, "text after 4"), (8, "text after 8")]
    assert decoded == [4, 8]


def test_runner_predictions_equal_eager_decoding_with_fewer_decodes(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    import polars as pl

    import gpu_runner.executor as ex_mod
    from syncintellects.cli import main

    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "sharegpt_whole.json"  # prompts with text: the predictor reads it
    args = ["run", "--model", "tiny-llama", "--device", "cpu", "--trace", str(fix), "--format", "sharegpt",
            "--synthetic-arrivals", "poisson", "--synthetic-rate", "1000000", "--synthetic-seed", "0",
            "--policy", "syncintellects-continuous", "--seed", "0", "--length-scale", "0.5", "--kv-tokens", "8192",
            "--quiet"]
    counts = {"lazy": 0, "eager": 0}
    real_texts = ex_mod.RealExecutor._texts

    def counting(mode):
        def texts(self, rows):
            out = real_texts(self, rows)
            if not out:
                return out
            dec = self.lm.decode
            if mode == "eager":  # what the runner did before: every row decoded after every step
                counts["eager"] += len(rows)
                return {r: out[r] for r in rows}
            wrapped = {r: (lambda r=r: (counts.__setitem__("lazy", counts["lazy"] + 1), out[r])[1]) for r in rows}
            return LazyTexts(wrapped)
        return texts

    outs = {}
    for mode in ("eager", "lazy"):
        monkeypatch.setattr(ex_mod.RealExecutor, "_texts", counting(mode))
        assert main(args + ["--out", str(tmp_path / mode)]) == 0
        outs[mode] = pl.read_parquet(tmp_path / mode / "requests.parquet")
        steps = pl.read_parquet(tmp_path / mode / "steps.parquet").drop("start_s", "end_s")
        outs[mode + "_steps"] = steps
    cols = ["request_id", "predicted_tokens", "output_tokens", "generated_tokens", "target_tokens"]
    assert outs["lazy"].select(cols).equals(outs["eager"].select(cols))
    assert outs["lazy_steps"].equals(outs["eager_steps"])
    assert 0 < counts["lazy"] < counts["eager"] / 2, counts
